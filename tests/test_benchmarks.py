"""benchmarks/run.py: a run writes outside the checkout unless asked to regenerate the
tracked results (``--write``)."""

from __future__ import annotations

import hashlib
import runpy
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACKED = [ROOT / "BENCHMARKS.md", ROOT / "benchmarks" / "results.json",
           *sorted((ROOT / "benchmarks").glob("bench_*.png"))]


def _digests() -> dict[Path, str]:
    return {path: hashlib.sha256(path.read_bytes()).hexdigest() for path in TRACKED}


def test_a_run_without_write_leaves_the_tracked_results_alone(tmp_path: Path) -> None:
    """``--replot --out DIR`` (the report path of every run) writes the report, the JSON
    and the plots under DIR, linking the plots relative to the report; the tracked files
    are untouched."""
    pytest.importorskip("matplotlib")
    run = runpy.run_path(str(ROOT / "benchmarks" / "run.py"))
    before = _digests()
    shutil.copy(ROOT / "benchmarks" / "results.json", tmp_path / "results.json")
    assert run["main"](["--replot", "--out", str(tmp_path)]) == 0
    assert _digests() == before
    report = (tmp_path / "BENCHMARKS.md").read_text()
    assert "](bench_overhead.png)" in report
    assert (tmp_path / "bench_overhead.png").stat().st_size > 0
    with pytest.raises(SystemExit):
        run["main"](["--write", "--out", str(tmp_path)])
