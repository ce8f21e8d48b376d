"""A copy of the package at another git revision, importable beside this checkout's.

    python benchmarks/baseline.py main /tmp/before     # /tmp/before/requests_smartretry_before

``benchmarks/run.py --against /tmp/before`` and ``benchmarks/callgrind.py --against
/tmp/before`` then measure "ours (before)" next to ours in the same run (interleaved
rounds for CPU): before/after figures taken minutes apart on a shared machine differ by
more than the change being measured.  The copy is the package's files at the revision
with its own absolute imports renamed; nothing else is changed.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "requests_smartretry"
#: The copy's package name (what ``run.make_client`` imports for "ours (before)").
RENAMED = "requests_smartretry_before"


def build(ref: str, target: Path) -> Path:
    """Write ``PACKAGE`` as of ``ref`` to ``target / RENAMED``; returns that folder."""
    archive = subprocess.run(["git", "archive", "--format=tar", ref, PACKAGE], cwd=ROOT,
                             capture_output=True, check=True).stdout
    out = target / RENAMED
    if out.exists():
        shutil.rmtree(out)
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            relative = Path(member.name).relative_to(PACKAGE)
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
            if relative.suffix == ".py":
                text = re.sub(rf"\b(from|import) {PACKAGE}\b", rf"\1 {RENAMED}",
                              data.decode("utf-8"))
                data = text.encode("utf-8")
            path = out / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
    (target / "REVISION").write_text(
        subprocess.run(["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True,
                       text=True, check=True).stdout.strip() + "\n")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    print(build(sys.argv[1], Path(sys.argv[2])))
