"""MkDocs hooks: README.md is the site's landing page, and SECURITY.md, BENCHMARKS.md
(with its plots) and CHANGELOG.md are pages of it, their links mended for the site.

On GitHub the pages link each other as files of the repository (``docs/deadlines.md``
from README, ``../SECURITY.md`` from a page); on the site every page sits in one folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent
#: Repository files that become site pages: file -> page.
PAGES = {"README.md": "index.md", "SECURITY.md": "security.md",
         "BENCHMARKS.md": "benchmarks.md", "CHANGELOG.md": "changelog.md"}
_LINK = re.compile(r"\]\((?!https?:|#)([^)]+)\)")


def _mend(target: str) -> str:
    path, hashmark, anchor = target.partition("#")
    path = path.removeprefix("../").removeprefix("docs/")
    path = PAGES.get(path, path)
    if path == "":
        path = "index.md"
    return path + hashmark + anchor


def on_files(files: Files, config: Any) -> Files:
    for source, page in PAGES.items():
        files.append(File.generated(config, page,
                                    content=(ROOT / source).read_text(encoding="utf-8")))
    for plot in sorted((ROOT / "benchmarks").glob("*.png")):
        files.append(File.generated(config, f"benchmarks/{plot.name}",
                                    content=plot.read_bytes()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return _LINK.sub(lambda m: f"]({_mend(m.group(1))})", markdown)
