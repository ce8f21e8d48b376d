"""Where the success path's extra work goes: Python bytecodes executed per request.

    python benchmarks/bytecodes.py              # ours against plain requests
    python benchmarks/bytecodes.py --top 60     # more rows
    python benchmarks/bytecodes.py --retried    # §1b's retried call (503, then 200 on the
                                                # retry, backoff 0) against urllib3 Retry

Timing a few microseconds inside a 500 µs loopback request is noise on a shared machine;
counting the bytecodes each function executes is exact and repeatable.  Both clients send
the same GETs to ``benchmarks/server.py`` (a separate process) with ``sys.settrace``
opcode events on; the table lists, per function, how many more bytecodes per request ours
executes than plain ``HTTPAdapter``.  C-level work (dict copies, allocations, locks) is
not counted: for that, run the same loop under ``valgrind --tool=callgrind`` with
``PYTHONHASHSEED=0`` and compare instruction totals of two request counts.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path
from types import FrameType
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the checkout, not an installed copy

import requests  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402

from requests_smartretry import SmartRetryAdapter  # noqa: E402

sys.path.insert(0, str(HERE))
from run import RETRIED_OURS, make_client, server_process  # noqa: E402

Tracer = Callable[[FrameType, str, Any], Optional[Callable[..., Any]]]


def count_bytecodes(get: Callable[[], object], requests_n: int) -> collections.Counter[str]:
    """Bytecodes executed per ``file:function`` over ``requests_n`` calls of ``get``."""
    counts: collections.Counter[str] = collections.Counter()

    def tracer(frame: FrameType, event: str, arg: Any) -> Tracer:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        key = f"{os.path.basename(frame.f_code.co_filename)}:{frame.f_code.co_name}"

        def local(frame: FrameType, event: str, arg: Any) -> Tracer:
            if event == "opcode":
                counts[key] += 1
            return local

        return local

    sys.settrace(tracer)
    try:
        for _ in range(requests_n):
            get()
    finally:
        sys.settrace(None)
    return counts


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per client")
    parser.add_argument("--top", type=int, default=30, help="rows to print")
    parser.add_argument("--retried", action="store_true",
                        help="the retried call (/flaky) against urllib3 Retry instead")
    args = parser.parse_args(argv)
    per_request: dict[str, dict[str, float]] = {}
    with server_process() as server:
        if args.retried:  # §1b's clients (benchmarks/run.py), each call retried once
            url = server.url("/flaky")
            base = "urllib3 Retry"
            gets = {name: make_client(name, wait=0.0).get for name in (base, RETRIED_OURS)}
        else:
            url = server.url("/ok")
            base = "plain"
            gets = {}
            for name, adapter, timeout in (
                    ("plain", HTTPAdapter(), 5.0),
                    ("ours", SmartRetryAdapter(max_retries=2, timeout=5.0), None)):
                session = requests.Session()
                session.mount("http://", adapter)
                gets[name] = lambda s=session, t=timeout: s.get(url, timeout=t)
        for name, get in gets.items():
            for _ in range(30):  # warm: connection, caches, the interpreter's specialisation
                get(url) if args.retried else get()
            counts = count_bytecodes((lambda g=get: g(url)) if args.retried else get,
                                     args.requests)
            per_request[name] = {k: v / args.requests for k, v in counts.items()}
    plain, ours = (per_request[n] for n in per_request)
    total_plain, total_ours = sum(plain.values()), sum(ours.values())
    print(f"bytecodes per {'retried call' if args.retried else 'request'}: {base} "
          f"{total_plain:.0f}, ours {total_ours:.0f} "
          f"(+{total_ours - total_plain:.0f}, {total_ours / total_plain:.3f}x)")
    diff = {k: ours.get(k, 0.0) - plain.get(k, 0.0) for k in set(plain) | set(ours)}
    print(f"{'extra':>8}  function")
    for key, extra in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:args.top]:
        if abs(extra) >= 0.5:
            print(f"{extra:8.1f}  {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
