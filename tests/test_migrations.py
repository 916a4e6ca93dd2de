"""Tortoise's migrations build the schema generate_schemas builds, on every backend, one database
per app; `backend-ref migrate --check` fails when a model changes without a migration."""

import os
import shutil
import sqlite3
import subprocess
import sys

import httpx
import pytest
from conftest import CLI, ROOT, login, make_settings, register

from backend_ref.app import create_app
from backend_ref.config import Settings
from backend_ref.databases import connect_databases, table_names
from backend_ref.migrations import SchemaConflict, migrate_all, pending, unmigrated_changes

# Every table either app has, children before parents (so plain DROP TABLE works everywhere).
TABLES = {
    "users": ["refresh_tokens", "account_tokens", "users", "tortoise_migrations"],
    "content": ["comments", "articles", "tortoise_migrations"],
}


async def drop_all_tables(settings: Settings) -> None:
    ctx = await connect_databases(settings.model_copy(update={"schema_setup": "none"}))
    try:
        for name, tables in TABLES.items():
            for table in tables:
                await ctx.db(name).execute_script(f"DROP TABLE IF EXISTS {table}")
            assert await table_names(ctx.db(name)) == set()
    finally:
        await ctx.close_connections()


SQLITE_SCHEMA = {
    "columns": 'SELECT m.name AS t, p.name, p.type, p."notnull" AS nn, p.dflt_value AS d, p.pk'
    " FROM sqlite_master m JOIN pragma_table_info(m.name) p WHERE m.type = 'table'",
    "indexes": 'SELECT m.name AS t, l."unique" AS u, group_concat(i.name) AS cols'
    " FROM sqlite_master m JOIN pragma_index_list(m.name) l JOIN pragma_index_info(l.name) i"
    " WHERE m.type = 'table' GROUP BY m.name, l.name",
    "foreign_keys": 'SELECT m.name AS t, f."table" AS ref, f."from" AS col, f."to" AS ref_col,'
    " f.on_delete FROM sqlite_master m JOIN pragma_foreign_key_list(m.name) f"
    " WHERE m.type = 'table'",
}
POSTGRES_SCHEMA = {
    "columns": "SELECT table_name AS t, column_name, data_type, is_nullable, column_default,"
    " character_maximum_length FROM information_schema.columns"
    " WHERE table_schema = current_schema()",
    "indexes": "SELECT t.relname AS t, ix.indisunique AS u, ix.indisprimary AS pk,"
    " array_to_string(array_agg(a.attname ORDER BY k.n), ',') AS cols"
    " FROM pg_index ix JOIN pg_class t ON t.oid = ix.indrelid"
    " JOIN pg_namespace ns ON ns.oid = t.relnamespace"
    " CROSS JOIN LATERAL unnest(ix.indkey) WITH ORDINALITY AS k(attnum, n)"
    " JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum"
    " WHERE ns.nspname = current_schema() GROUP BY t.relname, ix.indexrelid, ix.indisunique,"
    " ix.indisprimary",
    "foreign_keys": "SELECT conrelid::regclass::text AS t, pg_get_constraintdef(oid) AS def"
    " FROM pg_constraint WHERE contype = 'f' AND connamespace = current_schema()::regnamespace",
}
MYSQL_SCHEMA = {
    "columns": "SELECT table_name AS t, column_name AS c, column_type AS ty, is_nullable AS n,"
    " column_default AS d, extra AS e FROM information_schema.columns"
    " WHERE table_schema = DATABASE()",
    "indexes": "SELECT table_name AS t, non_unique AS nu,"
    " group_concat(column_name ORDER BY seq_in_index) AS cols FROM information_schema.statistics"
    " WHERE table_schema = DATABASE() GROUP BY table_name, index_name, non_unique",
    "foreign_keys": "SELECT k.table_name AS t, k.column_name AS c, k.referenced_table_name AS r,"
    " k.referenced_column_name AS rc, rc.delete_rule AS d"
    " FROM information_schema.key_column_usage k JOIN information_schema.referential_constraints rc"
    " ON rc.constraint_schema = k.constraint_schema AND rc.constraint_name = k.constraint_name"
    " WHERE k.table_schema = DATABASE() AND k.referenced_table_name IS NOT NULL",
}


async def schema(settings: Settings) -> dict:
    """Every table's columns, indexes (by their columns, not names) and foreign keys."""
    ctx = await connect_databases(settings.model_copy(update={"schema_setup": "none"}))
    try:
        snapshot = {}
        for name in TABLES:
            db = ctx.db(name)
            queries = {"sqlite": SQLITE_SCHEMA, "postgres": POSTGRES_SCHEMA}.get(
                db.capabilities.dialect, MYSQL_SCHEMA
            )
            for part, sql in queries.items():
                rows = await db.execute_query_dict(sql)
                rows = [{k.lower(): str(v) for k, v in row.items()} for row in rows]
                snapshot[name, part] = sorted(
                    tuple(sorted(row.items())) for row in rows if row["t"] != "tortoise_migrations"
                )
        return snapshot
    finally:
        await ctx.close_connections()


def migrate_settings(backend: str, tmp_path, name: str = "db") -> Settings:
    """make_settings, but the schema is migrated; SQLite files under tmp_path/name."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    return make_settings(backend, folder, schema_setup="migrate")


@pytest.fixture
async def empty(backend, tmp_path):
    """Empty databases for `backend`; server databases are emptied again afterwards."""
    settings = migrate_settings(backend, tmp_path)
    await drop_all_tables(settings)
    yield settings
    await drop_all_tables(settings)  # the other tests create their tables with generate_schemas


async def test_migrating_from_empty_builds_what_generate_schemas_builds(empty, backend, tmp_path):
    if backend == "sqlite":
        created = migrate_settings(backend, tmp_path, "created")
    else:
        created = empty  # one pair of server databases: create, look, empty, migrate, look
    ctx = await connect_databases(created.model_copy(update={"schema_setup": "create"}))
    await ctx.close_connections()
    expected = await schema(created)
    if backend != "sqlite":
        await drop_all_tables(empty)

    assert await pending(empty) == ["users.0001_initial", "content.0001_initial"]
    assert await migrate_all(empty) == ["users.0001_initial", "content.0001_initial"]
    migrated = await schema(empty)
    assert migrated == expected
    assert len(migrated["users", "columns"]) > 20 and migrated["content", "foreign_keys"]

    ctx = await connect_databases(empty)
    try:  # each app's tables, and its history, in its own database only
        assert await table_names(ctx.db("users")) == set(TABLES["users"])
        assert await table_names(ctx.db("content")) == set(TABLES["content"])
        for name in TABLES:
            rows = await ctx.db(name).execute_query_dict(
                "SELECT app, name FROM tortoise_migrations"
            )
            assert [(row["app"], row["name"]) for row in rows] == [(name, "0001_initial")]
    finally:
        await ctx.close_connections()

    assert await migrate_all(empty) == []  # twice: a no-op
    assert await pending(empty) == []
    assert await schema(empty) == migrated


async def test_tables_made_by_generate_schemas_are_a_schema_conflict_with_a_hint(empty):
    ctx = await connect_databases(empty.model_copy(update={"schema_setup": "create"}))
    await ctx.close_connections()
    with pytest.raises(
        SchemaConflict, match="already exists.*: the database has tables .*tortoise migrate --fake"
    ):
        await migrate_all(empty)
    assert await pending(empty) == ["users.0001_initial", "content.0001_initial"]


async def test_the_app_migrates_at_start_up_and_works(empty):
    app = create_app(empty)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await register(client)
            headers = await login(client)
            me = await client.get("/api/users/me", headers=headers)
    assert me.status_code == 200 and me.json()["display_name"] == "Ann"
    assert await pending(empty) == []


async def test_production_leaves_the_schema_to_its_deploy_step(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("BACKEND_REF_ENVIRONMENT", "production")
    monkeypatch.setenv("BACKEND_REF_JWT_SECRET", "p" * 40)
    settings = Settings(
        _env_file=None,
        users_db_url=f"sqlite://{tmp_path}/users.sqlite3",
        content_db_url=f"sqlite://{tmp_path}/content.sqlite3",
        site_dir=tmp_path / "no-site",
    )
    assert settings.schema_setup == "none"
    monkeypatch.setenv("BACKEND_REF_SCHEMA_SETUP", "migrate")
    assert Settings(_env_file=None).schema_setup == "migrate"  # an explicit value wins

    app = create_app(settings)
    with caplog.at_level("WARNING", logger="backend_ref.migrations"):
        async with app.router.lifespan_context(app):
            assert await table_names(app.state.tortoise.db("users")) == set()
    assert await pending(settings) == ["users.0001_initial", "content.0001_initial"]
    warned = [r.getMessage() for r in caplog.records if r.name == "backend_ref.migrations"]
    assert warned == [
        "2 migrations pending (users.0001_initial, content.0001_initial): run `backend-ref migrate`"
    ]

    await migrate_all(settings)  # the deploy step; the next start has nothing to say
    caplog.clear()
    with caplog.at_level("WARNING", logger="backend_ref.migrations"):
        async with app.router.lifespan_context(app):
            assert "users" in await table_names(app.state.tortoise.db("users"))
    assert not [r for r in caplog.records if r.name == "backend_ref.migrations"]


def run_cli(*args: str, cwd, env: dict[str, str] | None = None, command=CLI):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKEND_REF_")} | (env or {})
    return subprocess.run(
        [*command, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_backend_ref_migrate_on_a_fresh_checkout(tmp_path):
    """The default settings: SQLite files under ./data/, which does not exist yet."""
    plan = run_cli("migrate", "--plan", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert plan.stdout.splitlines() == [
        "would apply users.0001_initial",
        "would apply content.0001_initial",
    ]
    done = run_cli("migrate", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "applied users.0001_initial",
        "applied content.0001_initial",
    ]
    with sqlite3.connect(tmp_path / "data" / "users.sqlite3") as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "refresh_tokens", "account_tokens", "tortoise_migrations"} <= tables
    again = run_cli("migrate", cwd=tmp_path)
    assert (again.returncode, again.stdout) == (0, "no pending migrations\n")


async def test_models_and_migrations_agree(tmp_path):
    assert await unmigrated_changes(make_settings("sqlite", tmp_path)) == {}
    check = run_cli("migrate", "--check", cwd=ROOT)
    assert (check.returncode, check.stdout) == (0, "models and migrations agree\n"), check.stderr


def test_check_fails_for_a_new_field_until_makemigrations_writes_its_migration(tmp_path):
    """In a copy of the package, User gains a field: --check fails; Tortoise's makemigrations
    writes the migration; --check passes and `migrate` adds the column."""
    for package in ("backend_ref", "backend_ref_migrations"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")  # [tool.tortoise]
    models = tmp_path / "backend_ref" / "databases.py"
    source = models.read_text()
    bio = "    bio = fields.CharField(max_length=500, null=True)"
    assert source.count(bio) == 1
    nickname = "    nickname = fields.CharField(max_length=40, null=True)\n"
    models.write_text(source.replace(bio, nickname + bio))
    env = {
        "PYTHONPATH": str(tmp_path),  # the copy, not the installed package
        "BACKEND_REF_USERS_DB_URL": f"sqlite://{tmp_path}/users.sqlite3",
        "BACKEND_REF_CONTENT_DB_URL": f"sqlite://{tmp_path}/content.sqlite3",
    }

    check = run_cli("migrate", "--check", cwd=tmp_path, env=env)
    assert check.returncode == 1, check.stdout + check.stderr
    assert "users: models changed without a migration" in check.stderr
    assert "nickname" in check.stderr and "content:" not in check.stderr
    assert "tortoise makemigrations" in check.stderr and check.stdout == ""

    tortoise = [sys.executable, "-m", "tortoise"]
    made = run_cli("makemigrations", "-n", "user_nickname", cwd=tmp_path, env=env, command=tortoise)
    assert made.returncode == 0, made.stdout + made.stderr
    written = tmp_path / "backend_ref_migrations" / "users" / "0002_user_nickname.py"
    assert "AddField" in written.read_text() and "nickname" in written.read_text()
    assert not (ROOT / "backend_ref_migrations" / "users" / written.name).exists()

    check = run_cli("migrate", "--check", cwd=tmp_path, env=env)
    assert (check.returncode, check.stdout) == (0, "models and migrations agree\n"), check.stderr
    done = run_cli("migrate", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert "applied users.0002_user_nickname" in done.stdout.splitlines()
    with sqlite3.connect(tmp_path / "users.sqlite3") as db:
        columns = [row[1] for row in db.execute('PRAGMA table_info("users")')]
    assert "nickname" in columns


def test_the_migration_packages_ship_with_the_wheel():
    """pyproject's package list, as setuptools reads it, holds both apps' migrations."""
    import tomllib

    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = set(find_packages(ROOT, include=config["packages"]["find"]["include"]))
    wanted = {"backend_ref", "backend_ref_migrations.users", "backend_ref_migrations.content"}
    assert wanted <= packages
