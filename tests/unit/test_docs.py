"""The front door: a README short enough to read, whose links lead somewhere, and a user guide
that builds as a site with no broken link or anchor (`mkdocs build --strict`)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def test_the_readme_reads_in_two_minutes():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


@pytest.mark.parametrize("target", sorted(set(re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)",
                                                         README.read_text(encoding="utf-8")))))
def test_every_link_in_the_readme_leads_to_a_file_of_the_repository(target):
    if "://" in target:
        pytest.skip("a web address")
    assert (REPO / target).exists(), f"README.md links to {target}, which does not exist"


def test_every_guide_page_is_in_the_site_navigation():
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(path.name for path in (REPO / "docs").glob("*.md"))
    assert [page for page in pages if f": {page}" not in nav] == []


def test_the_guide_builds_with_no_broken_link_or_anchor(tmp_path):
    try:
        import mkdocs  # noqa: F401
        import material  # noqa: F401
    except ImportError:
        if os.environ.get("EVALKIT_REQUIRE_TESTBED"):
            pytest.fail("mkdocs and mkdocs-material are not installed (the `test` extra brings them)")
        pytest.skip("mkdocs and mkdocs-material are not installed: pip install -e '.[test]'")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert done.returncode == 0, done.stderr[-3000:]
