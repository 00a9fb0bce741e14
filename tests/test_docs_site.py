"""The documentation site builds with no warnings.

``mkdocs build --strict`` (mkdocs.yml at the root, MkDocs with the Material theme from the
``docs`` extra) turns every warning into an error: a link to a page or an anchor that does not
exist, a page of docs/ missing from the nav, a nav entry without its page, a snippet
(CHANGELOG.md, BENCHMARKS.md) that is not there. The site is built into a temporary folder.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )


def test_the_site_builds_with_no_warnings(tmp_path: Path) -> None:
    done = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout}\n{done.stderr}"
    assert "WARNING" not in done.stderr, done.stderr
    for page in ("index.html", "getting-started/index.html", "api/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    changelog = (tmp_path / "site" / "changelog" / "index.html").read_text()
    assert "Changelog" in changelog  # CHANGELOG.md was included, not linked
    assert "--8&lt;--" not in changelog


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    """The check can fail: a copy of the docs with one link to a missing page does not build."""
    docs = tmp_path / "docs"
    subprocess.run(["cp", "-r", str(ROOT / "docs"), str(docs)], check=True)
    (docs / "index.md").write_text(
        (docs / "index.md").read_text() + "\nSee [nowhere](no-such-page.md).\n"
    )
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        (ROOT / "mkdocs.yml").read_text().replace("docs_dir: docs", f"docs_dir: {docs}") + "\n"
    )
    done = _build(config, tmp_path / "site")
    assert done.returncode != 0
    assert "no-such-page.md" in done.stderr
