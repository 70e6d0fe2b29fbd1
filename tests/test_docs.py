"""The documentation site builds with warnings as errors: a broken link, a stale anchor or a
page missing from the navigation fails here (the configuration tables are checked against the
schema by test_configdoc.py)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path):
    built = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert built.returncode == 0, built.stdout + built.stderr
    pages = {p.parent.name for p in (tmp_path / "site").glob("*/index.html")}
    assert {"configuration", "results", "getting-started"} <= pages


def test_the_readme_links_to_every_page():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "index.md" and f"(docs/{p.name})" not in readme]
    assert not missing, f"README.md's documentation table lacks {missing}"
    assert len(readme.splitlines()) < 300  # a newcomer's first page, not the manual
