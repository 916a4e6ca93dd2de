"""The site build refuses to publish a broken article: a failing cell or a Sphinx warning fails
it, and the site already in place stays as it was."""

import json
import subprocess
from pathlib import Path

import pytest

from backend_ref.site import build_site

ROOT = Path(__file__).resolve().parent.parent
MERMAID = ROOT / "docs" / "node_modules" / "mermaid" / "dist" / "mermaid.esm.min.mjs"

pytestmark = [
    pytest.mark.skipif(not MERMAID.is_file(), reason="no Mermaid: run `npm ci --prefix docs`"),
    pytest.mark.timeout(180),
]


def notebook(*cells: tuple[str, str]) -> str:
    return json.dumps(
        {
            "cells": [
                {"cell_type": kind, "id": f"c{i}", "metadata": {}, "source": source}
                | ({"outputs": [], "execution_count": None} if kind == "code" else {})
                for i, (kind, source) in enumerate(cells)
            ],
            "metadata": {"kernelspec": {"name": "python3", "display_name": "python3"}},
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    )


@pytest.mark.parametrize(
    ("broken_cell", "reported"),
    [
        (("code", "#| export\n1 / 0"), "ZeroDivisionError"),
        (("markdown", "See [the missing one](99_missing.ipynb)."), "target not found"),
    ],
    ids=["failing-cell", "warning"],
)
def test_a_broken_article_fails_the_build_and_keeps_the_old_site(
    tmp_path, capfd, broken_cell, reported
):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    (nbs / "index.ipynb").write_text(notebook(("markdown", "# Home")))
    (nbs / "01_broken.ipynb").write_text(notebook(("markdown", "# Broken"), broken_cell))
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("the site being served")

    with pytest.raises(subprocess.CalledProcessError):
        build_site(nbs, site, ROOT / "docs", tmp_path / "build")
    assert reported in "".join(capfd.readouterr())
    assert (site / "index.html").read_text() == "the site being served"
