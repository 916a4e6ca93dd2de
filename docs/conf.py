"""Sphinx configuration of the articles site. `make docs` (backend-ref-site build) runs it on the
sources that `backend_ref.site.prepare_sources` writes from nbs/; see nbs/91_site.ipynb."""

import os

project = "backend-ref"
author = "backend-ref developers"
copyright = "backend-ref developers"  # noqa: A001 (Sphinx's name)

extensions = ["myst_nb", "ablog", "sphinxcontrib.mermaid"]
exclude_patterns = ["**.ipynb_checkpoints"]
templates_path = ["_templates"]
html_static_path = ["_static", "_mermaid"]  # _mermaid: copied from node_modules by the build
# Copied as they are: account/verify-email/index.html and account/reset-password/index.html, the
# pages that mailed links open (/account/verify-email#token=...; backend_ref.mail.LINK_PATHS).
html_extra_path = ["_extra"]

# Notebooks: executed at every build; a failing cell fails the build (and -W makes warnings fail).
nb_execution_mode = "force"
nb_execution_raise_on_error = False  # reported as a warning (with the traceback), which -W makes fatal
nb_execution_show_tb = True
nb_execution_timeout = 180
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
myst_fence_as_directive = ["mermaid"]  # ```mermaid fences render in Jupyter, GitHub and here

# Mermaid from the local copy: no page loads anything from another host.
mermaid_use_local = "mermaid.esm.min.mjs"
mermaid_include_elk = False
mermaid_d3_zoom = False
mermaid_fullscreen = False
mermaid_height = "auto"

# ABlog: every article is a post; the archive lists them and atom.xml is the feed.
blog_path = "articles"
blog_title = "backend-ref articles"
blog_baseurl = os.environ.get("BACKEND_REF_SITE_URL", "http://127.0.0.1:8000/")
blog_authors = {"backend-ref": ("backend-ref developers", None)}
blog_default_author = "backend-ref"
blog_feed_fulltext = False
blog_feed_length = 20
post_date_format = "%Y-%m-%d"
post_date_format_short = "%Y-%m-%d"
post_auto_image = 0
post_auto_excerpt = 1
post_show_prev_next = False  # previous/next follow the reading order (the toctree), not dates
fontawesome_included = True

html_theme = "pydata_sphinx_theme"
html_title = "backend-ref"
html_css_files = ["comments.css"]
html_sidebars = {"**": ["articles-nav.html"]}
html_theme_options = {
    "navbar_center": [],
    "navbar_end": ["theme-switcher"],
    "article_footer_items": ["comments.html"],
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
    "show_prev_next": True,
    "pygments_light_style": "tango",
    "pygments_dark_style": "monokai",
}
html_show_sourcelink = False
html_copy_source = False


def _article_context(app, pagename, templatename, context, doctree):
    """Mark article pages (ABlog posts) so the comments template renders there only, and link
    each article to the previous and next one in reading order (the home page's toctree)."""
    posts = getattr(app.env, "ablog_posts", {})
    context["article_slug"] = pagename if pagename in posts else None
    order = [app.config.root_doc, *app.env.toctree_includes.get(app.config.root_doc, [])]
    if pagename in order:
        i = order.index(pagename)
        for key, j in (("prev", i - 1), ("next", i + 1)):
            if 0 <= j < len(order):
                link, title = context["pathto"](order[j]), app.env.titles[order[j]].astext()
                context[key] = {"link": link, "title": title}


def setup(app):
    app.connect("html-page-context", _article_context)
