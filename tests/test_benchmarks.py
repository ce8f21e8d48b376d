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


def test_cpu_floor_measures_the_layers_it_names() -> None:
    """``benchmarks/cpu_floor.py``: each stub client sends through the layer it is named
    for (ours counts the call in its statistics; plain HTTPAdapter has none), and a
    ballast of N units runs exactly N units of its work per send, before or after the
    response as named: the sizing to ours' own instructions relies on both."""
    import sys

    floor = runpy.run_path(str(ROOT / "benchmarks" / "cpu_floor.py"))
    stub = floor["StubClient"]
    for name in ("plain", "ours", floor["BARE"], *floor["BALLASTS"]):
        assert stub(name).get().status_code == 200, name
    ours = stub("ours")
    for _ in range(3):
        ours.get()
    assert ours.adapter.stats.snapshot()["__total__"]["calls_succeeded"] == 3
    with pytest.raises(ValueError, match="unknown stub client"):
        stub("tenacity")
    for name, units in (("ballast, loop", 7), ("ballast, spread", 5),
                        ("ballast, spread after the response", 4)):
        client = stub(name)
        type(client.adapter).units = units
        calls: list[str] = []

        def count(frame: object, event: str, arg: object, calls: list[str] = calls) -> None:
            code = getattr(frame, "f_code", None)
            if event == "call" and code is not None and (
                    code.co_name == "_unit" or code.co_filename.startswith("<ballast unit")):
                calls.append(code.co_name)
            if event == "call" and code is not None and code.co_name == "send" and \
                    "run.py" in code.co_filename:  # the canned transport: after it, none
                calls.append("transport")

        sys.setprofile(count)
        try:
            client.get()
        finally:
            sys.setprofile(None)
        units_run = [c for c in calls if c != "transport"]
        assert len(units_run) == units, (name, calls)
        after = calls.index("transport") == 0
        assert after == name.endswith("after the response"), (name, calls)
