"""The docs agree with the repository: every table rendered from result data matches that data,
and every relative link of README.md and docs/ points at a file of the repository."""
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def test_tables_match_the_result_data():
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "render.py"), "--check"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_links_resolve_inside_the_repository(page):
    text = open(page).read()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    for link in links:
        if re.match(r"[a-z]+://", link):
            continue
        target = os.path.normpath(os.path.join(os.path.dirname(page), link))
        assert target.startswith(ROOT) and os.path.exists(target), f"{os.path.relpath(page, ROOT)}: {link}"
