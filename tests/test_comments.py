"""Comments in the content database, authors in the users database."""

import logging

import pytest
from conftest import login, register

from backend_ref.comments import sync_articles
from backend_ref.databases import Article, Comment, User


@pytest.fixture
async def article(ctx):
    with ctx:
        await sync_articles([("hello", "Hello")])
        return await Article.get(slug="hello")


async def test_post_and_list_comments_with_author_names(client, article):
    await register(client)
    headers = await login(client)
    r = await client.post("/api/articles/hello/comments", headers=headers, json={"body": "First"})
    assert r.status_code == 201
    comment = r.json()
    assert comment["body"] == "First" and comment["author"]["display_name"] == "Ann"
    r = await client.get("/api/articles/hello/comments")
    assert r.status_code == 200
    assert r.json() == {"items": [comment], "total": 1, "next_after": None}


async def test_keyset_pagination_walks_every_comment_once(client, article):
    await register(client)
    headers = await login(client)
    for i in range(7):
        r = await client.post(
            "/api/articles/hello/comments", headers=headers, json={"body": f"c{i}"}
        )
        assert r.status_code == 201
    seen, after = [], 0
    while True:
        page = (await client.get(f"/api/articles/hello/comments?limit=3&after={after}")).json()
        assert page["total"] == 7
        seen += [c["body"] for c in page["items"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert seen == [f"c{i}" for i in range(7)]


async def test_a_page_of_fifty_comments_by_fifty_authors_costs_three_queries(client, ctx, article):
    with ctx:
        users = [
            await User.create(
                email=f"u{i}@x.org",
                email_key=f"u{i}@x.org",
                display_name=f"U{i}",
                password_hash="x",
            )
            for i in range(50)
        ]
        await Comment.bulk_create(
            [Comment(article=article, author_id=u.id, body=f"by {u.display_name}") for u in users]
        )

    class Counter(logging.Handler):
        count = 0

        def emit(self, record):
            Counter.count += 1

    log = logging.getLogger("tortoise.db_client")
    handler, level = Counter(), log.level
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        r = await client.get("/api/articles/hello/comments?limit=50")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert r.status_code == 200 and len(r.json()["items"]) == 50
    assert [c["author"]["display_name"] for c in r.json()["items"]] == [f"U{i}" for i in range(50)]
    assert Counter.count == 3  # article with its count, page, authors


async def test_comments_of_a_deleted_author_remain_and_show_as_deleted(client, ctx, article):
    user = await register(client)
    headers = await login(client)
    await client.post("/api/articles/hello/comments", headers=headers, json={"body": "Still here"})
    with ctx:
        await User.filter(id=user["id"]).delete()
    items = (await client.get("/api/articles/hello/comments")).json()["items"]
    assert items[0]["body"] == "Still here"
    assert items[0]["author"] == {"id": None, "display_name": "[deleted user]"}


async def test_comment_text_is_stored_verbatim(client, article):
    await register(client)
    headers = await login(client)
    body = "<img src=x onerror=alert(1)> & <script>alert('x')</script> 😀"
    r = await client.post("/api/articles/hello/comments", headers=headers, json={"body": body})
    assert r.json()["body"] == body


BAD = [
    ("post", "/api/articles/hello/comments", {"body": ""}, 422, "body"),
    ("post", "/api/articles/hello/comments", {"body": "x" * 2001}, 422, "body"),
    ("post", "/api/articles/hello/comments", {"body": 12}, 422, "body"),
    ("post", "/api/articles/hello/comments", {"body": "a\x00b"}, 422, "body"),
    ("post", "/api/articles/hello/comments", {}, 422, "body"),
    ("post", "/api/articles/hello/comments", {"body": "hi", "author_id": 1}, 422, "author_id"),
    ("post", "/api/articles/nope/comments", {"body": "hi"}, 404, None),
    ("post", "/api/articles/BAD SLUG/comments", {"body": "hi"}, 422, "slug"),
    ("get", "/api/articles/hello/comments?limit=0", None, 422, "limit"),
    ("get", "/api/articles/hello/comments?limit=abc", None, 422, "limit"),
    ("get", "/api/articles/hello/comments?after=-1", None, 422, "after"),
    ("get", "/api/articles/hello/comments?after=99999999999", None, 422, "after"),
    ("get", "/api/articles/" + "a" * 101 + "/comments", None, 422, "slug"),
]


@pytest.mark.parametrize("method,url,body,status,field", BAD)
async def test_bad_comment_requests_are_4xx_naming_the_field_and_write_nothing(
    client, ctx, article, method, url, body, status, field
):
    await register(client)
    headers = await login(client)
    r = await client.request(method, url, headers=headers, json=body)
    assert r.status_code == status, r.text
    if field:
        assert field in [f["field"] for f in r.json()["fields"]]
    with ctx:
        assert await Comment.all().count() == 0


async def test_commenting_needs_a_token(client, ctx, article):
    r = await client.post("/api/articles/hello/comments", json={"body": "hi"})
    assert (r.status_code, r.headers["www-authenticate"]) == (401, "Bearer")
    with ctx:
        assert await Comment.all().count() == 0


async def test_articles_are_listed_and_synced_idempotently(client, ctx, article):
    with ctx:
        await sync_articles([("hello", "Hello again"), ("second", "Second")])
    r = await client.get("/api/articles")
    assert sorted((a["slug"], a["title"]) for a in r.json()) == [
        ("hello", "Hello again"),
        ("second", "Second"),
    ]
    assert (await client.get("/api/articles/second")).json()["title"] == "Second"
    assert (await client.get("/api/articles/missing")).status_code == 404


async def test_comments_are_limited_per_account(app, client, ctx, article):
    from backend_ref.rate_limits import RateLimiter

    app.state.settings = app.state.settings.model_copy(update={"comment_limit_per_user": "3/day"})
    app.state.limiter = RateLimiter(app.state.settings)
    await register(client)
    await register(client, email="bob@example.com", name="Bob")
    ann, bob = await login(client), await login(client, email="bob@example.com")
    statuses = [
        (await client.post("/api/articles/hello/comments", headers=ann, json={"body": f"{i}"}))
        for i in range(4)
    ]
    assert [r.status_code for r in statuses] == [201, 201, 201, 429]
    assert int(statuses[-1].headers["retry-after"]) > 0
    r = await client.post("/api/articles/hello/comments", headers=bob, json={"body": "hi"})
    assert r.status_code == 201  # another account is not affected
    with ctx:
        assert await Comment.filter(article_id=article.id).count() == 4  # nothing half-written
