"""Instructions per successful request, counted by valgrind's callgrind: the stable figure.

    python benchmarks/callgrind.py                       # every variant, 2000 GETs each
    python benchmarks/callgrind.py --requests 500 --variants plain ours
    python benchmarks/callgrind.py --annotate            # + the C functions where ours
                                                         #   differs from plain
    python benchmarks/callgrind.py --json out.json       # the figures as data
    python benchmarks/callgrind.py --httpx               # smart_client() ÷ httpx.Client
    python benchmarks/callgrind.py --syscalls            # system calls per request (strace)
    python benchmarks/callgrind.py --own                 # adapter.send over a canned 200:
                                                         #   our layer's own instructions

Timing a few microseconds on a shared 2-core machine is noise; the instructions a request
executes are nearly the same run after run.  For each variant the client (built by
``benchmarks/run.py``'s ``make_client``, the clients of §1) runs twice under
``valgrind --tool=callgrind`` with ``PYTHONHASHSEED=0``: once with the warm-up only, once
with the warm-up plus ``--requests`` GETs of ``/ok``; the heap is frozen (``gc.freeze()``)
early in the warm-up, so that the garbage collector's full passes cost what the requests'
own objects cost, not a chance walk over every imported module.  The difference of the two totals,
divided by ``--requests``, is what one request costs after start-up, imports, the first
connection and the interpreter's specialisation are paid for.  Every thread of the client
counts (our watchdog included).  The server (``benchmarks/server.py``) is a separate
process, not under valgrind.  The children get a small fixed environment (``KEPT_ENV``,
plus ``--env``): requests walks every environment variable on every request (proxy
settings), so a longer environment costs every client more, and figures taken from two
shells would differ by thousands of instructions per request.

The Python-level breakdown (bytecodes per function, ours against plain) is
``python benchmarks/bytecodes.py``; ``--annotate`` here gives the C-level one (exclusive
instructions per request by interpreter function: dict copies, allocation, locks).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: --variants name -> the ``run.make_client`` name of the client (§1's clients).
SHORT = {"plain": "plain", "urllib3": "urllib3 Retry", "ours": "ours",
         "ours-timeout": "ours, timeout= per call",
         "ours-bare": "ours, stats/budget/log off", "tenacity": "tenacity",
         "stamina": "stamina", "backoff": "backoff"}
#: With --retried, ours runs as in §1b (a budget that does not run dry when every call
#: retries).
RETRIED = {"ours": "ours, RetryBudget(ratio=1.0)"}

WARMUP = 200

# The child: build one client, warm it, run `count` GETs.  Run as `python -c`, with the
# checkout (and benchmarks/) first on the path, so that this tree's package is measured.
CHILD = r"""
import gc, json, logging, sys
sys.path[:0] = [{root!r}, {here!r}]
logging.getLogger().addHandler(logging.NullHandler())   # as run.py: records built, never shown
name, url, count, wait = json.loads(sys.argv[1])
if name.startswith("httpx "):
    from bench_httpx import make_client
    client = make_client(name)
elif name.startswith("stub "):  # adapter.send over a canned 200 (cpu_floor.py)
    from cpu_floor import StubClient
    client = StubClient(name[5:])
else:
    from run import make_client
    client = make_client(name, wait=wait)
get = client.get
for index in range(count):
    if index == {frozen}:
        gc.collect()
        gc.freeze()
    response = get(url)
    assert response.status_code == 200, response.status_code
client.close()
"""
# After this many GETs (inside the warm-up) the heap so far (imports, the client) is frozen:
# a full collection then walks only what the requests allocate, instead of a heap whose
# size differs from one client library to the next and whose collections would land in
# or out of the measured window by chance.
FROZEN = 50


def valgrind() -> str:
    found = shutil.which("valgrind") or "/usr/bin/valgrind"
    if not os.path.exists(found):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    return found


#: What a child's environment keeps of ours.  requests walks the whole environment on
#: every request (proxy settings: ``getproxies_environment``), so each variable costs
#: every client instructions per request: the children get the same small environment,
#: whatever the shell that runs this script holds.
KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


def child_env(extra: dict[str, str]) -> dict[str, str]:
    if "*" in extra:  # --inherit-env
        env = dict(os.environ)
        extra = {k: v for k, v in extra.items() if k != "*"}
    else:
        env = {k: os.environ[k] for k in KEPT_ENV if k in os.environ}
    env.update(PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra)
    return env


def run_child(out: Path, name: str, url: str, count: int, wait: float,
              cache_sim: bool, extra_env: dict[str, str], syscalls: bool = False) -> None:
    env = child_env(extra_env)
    if syscalls:  # the system calls instead (what callgrind does not see: kernel time)
        command = [shutil.which("strace") or "strace", "-f", "-c", "-o", str(out)]
    else:
        command = [valgrind(), "--tool=callgrind", f"--callgrind-out-file={out}",
                   "--dump-line=no", "--compress-strings=no", "--compress-pos=no"]
    if cache_sim:
        command += ["--cache-sim=yes", "--branch-sim=yes"]
    command += [sys.executable, "-c", CHILD.format(root=str(ROOT), here=str(HERE), frozen=FROZEN),
                json.dumps([name, url, count, wait])]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"the {name} client failed under valgrind:\n{done.stderr[-3000:]}")


def totals(out: Path) -> dict[str, int]:
    """The run's event totals (``Ir``, and with the cache simulation ``D1mr``…; or, from
    ``strace -c``, the calls of each system call)."""
    text = out.read_text(errors="replace")
    if "% time" in text:  # strace -c: "% time  seconds  usecs/call  calls  [errors]  syscall"
        calls: dict[str, int] = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                calls[fields[-1]] = int(fields[3])
        return calls
    events: list[str] = []
    for line in text.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("totals:") or line.startswith("summary:"):
            values = [int(v) for v in line.split()[1:]]
            return dict(zip(events, values))
    raise SystemExit(f"no totals in {out}")


_ANNOTATE_ROW = re.compile(r"^\s*([\d,]+)\s+(?:\([^)]*\)\s+)?(.+?)\s*$")


def by_function(out: Path) -> dict[str, int]:
    """Exclusive instructions per C function (``callgrind_annotate``)."""
    done = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100",
                           str(out)], capture_output=True, text=True)
    rows: dict[str, int] = {}
    started = False
    for line in done.stdout.splitlines():
        if "file:function" in line:
            started = True
            continue
        if not started:
            continue
        match = _ANNOTATE_ROW.match(line)
        if match:
            name = re.sub(r"\s*\[[^\]]*\]$", "", match.group(2))
            name = name.split(":", 1)[-1] if ":" in name else name
            name = re.sub(r"'\d+$", "", name)  # recursion depth suffix: one function
            rows[name] = rows.get(name, 0) + int(match.group(1).replace(",", ""))
    return rows


def measure(name: str, url: str, requests_n: int, wait: float, workdir: Path,
            cache_sim: bool, annotate: bool, extra_env: dict[str, str],
            syscalls: bool = False) -> dict[str, Any]:
    slug = re.sub(r"\W+", "_", name)
    base, full = workdir / f"{slug}.base.out", workdir / f"{slug}.full.out"
    run_child(base, name, url, WARMUP, wait, cache_sim, extra_env, syscalls)
    run_child(full, name, url, WARMUP + requests_n, wait, cache_sim, extra_env, syscalls)
    a, b = totals(base), totals(full)
    result: dict[str, Any] = {"per_request": {k: (b.get(k, 0) - a.get(k, 0)) / requests_n
                                              for k in set(a) | set(b)}}
    if annotate:
        fa, fb = by_function(base), by_function(full)
        result["functions"] = {k: (fb.get(k, 0) - fa.get(k, 0)) / requests_n
                               for k in set(fa) | set(fb)}
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000,
                        help="measured GETs per variant, after the warm-up (default 2000)")
    parser.add_argument("--variants", nargs="+", choices=sorted(SHORT), default=list(SHORT),
                        help="which clients (default: all)")
    parser.add_argument("--annotate", action="store_true",
                        help="also list the C functions where ours differs from plain")
    parser.add_argument("--top", type=int, default=25, help="rows of --annotate")
    parser.add_argument("--cache-sim", action="store_true",
                        help="also count cache misses and mispredicted branches (slower)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--retried", action="store_true",
                        help="§1b's retried call instead (/flaky: 503, then 200 on the "
                             "retry, backoff 0), against urllib3 Retry; plain is left out")
    parser.add_argument("--httpx", action="store_true",
                        help="the httpx transport instead: smart_client() against a plain "
                             "httpx.Client (benchmarks/bench_httpx.py's clients)")
    parser.add_argument("--own", action="store_true",
                        help="our layer's own instructions: adapter.send over a canned 200 "
                             "(no network, no requests session), ours against HTTPAdapter's "
                             "(benchmarks/cpu_floor.py's stub clients)")
    parser.add_argument("--syscalls", action="store_true",
                        help="system calls per request by name (strace -c, no valgrind): "
                             "the kernel's share of CPU, which callgrind does not count")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for every child (all variants alike); "
                             "the children otherwise get only " + ", ".join(KEPT_ENV))
    parser.add_argument("--inherit-env", action="store_true",
                        help="give the children this shell's whole environment instead "
                             "(plain costs more; every ratio to it shrinks)")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="also measure each of ours as of another revision ('... "
                             "(before)'): DIR from `python benchmarks/baseline.py REF DIR`")
    parser.add_argument("--baseline", type=Path,
                        help="take plain's figure from this --json file of an earlier run "
                             "(same machine, versions and --env) instead of measuring it "
                             "again")
    args = parser.parse_args(argv)
    extra_env = dict(item.split("=", 1) for item in args.env)
    if args.against is not None:
        extra_env["BENCH_AGAINST"] = str(args.against.resolve())
    environment = (f"this shell's {len(os.environ)} environment variables" if args.inherit_env
                   else f"environment {', '.join(KEPT_ENV)}"
                   + "".join(f", {k}" for k in extra_env))
    base = "urllib3 Retry" if args.retried else "plain"
    names = [(RETRIED if args.retried else {}).get(v, SHORT[v]) for v in args.variants
             if not (args.retried and v == "plain")]
    if args.httpx:
        if args.retried or args.against is not None:
            parser.error("--httpx: not with --retried or --against")
        base, names = "httpx plain", ["httpx plain", "httpx ours"]
    if args.own:
        if args.retried or args.httpx or args.against is not None:
            parser.error("--own: not with --retried, --httpx or --against")
        base = "stub plain"
        names = [f"stub {n}" for n in ("plain", "ours", "ours, stats/budget/log off")]
    if base not in names:
        names.insert(0, base)
    if args.against is not None:
        names += [f"{n} (before)" for n in names if n.startswith("ours")]
    results: dict[str, Any] = {}
    if args.baseline:
        results[base] = json.loads(args.baseline.read_text())["results"][base]
    sys.path[:0] = [str(ROOT), str(HERE)]
    from run import server_process

    with server_process() as server, tempfile.TemporaryDirectory(prefix="callgrind-") as tmp:
        url = server.url("/flaky" if args.retried else "/ok")
        wait = 0.0 if args.retried else 0.001
        for name in names:
            if name in results:
                continue
            print(f"  {name}...", file=sys.stderr, flush=True)
            results[name] = measure(name, url, args.requests, wait, Path(tmp), args.cache_sim,
                                    args.annotate and name in (base, "ours", RETRIED["ours"]),
                                    {**extra_env, "*": "1"} if args.inherit_env
                                    else extra_env, args.syscalls)
    if args.syscalls:
        calls = sorted({k for r in results.values() for k, v in r["per_request"].items()
                        if abs(v) >= 0.005})
        _table(f"strace -c, system calls per request ({args.requests} requests after "
               f"{WARMUP}; git {_git_head()})", [*calls, "all"],
               [(name, [f"{row.get(c, 0.0):.2f}" for c in calls] + [f"{sum(row.values()):.2f}"])
                for name in names for row in [results[name]["per_request"]]])
        return 0
    plain = results[base]["per_request"]
    events = list(plain)
    what = ("retried calls to /flaky" if args.retried
            else "sends over a canned 200" if args.own else "GETs of /ok")
    _table(f"callgrind, {args.requests} {what} per variant after {WARMUP} warm-up "
           f"(PYTHONHASHSEED=0; {environment}; git {_git_head()})",
           [f"{e} / call" for e in events] + [f"Ir × {base}"],
           [(name, [f"{row[e]:,.0f}" + ("" if e == "Ir" or not plain[e] else
                                        f" ({row[e] / plain[e]:.3f}×)") for e in events]
             + [f"{row['Ir'] / plain['Ir']:.4f}"])
            for name in names for row in [results[name]["per_request"]]])
    ours = next((n for n in names if n.startswith("ours") and "off" not in n), None)
    if args.annotate and ours is not None and "functions" in results.get(base, {}):
        mine, theirs = results[ours]["functions"], results[base]["functions"]
        diff = {k: mine.get(k, 0.0) - theirs.get(k, 0.0) for k in set(mine) | set(theirs)}
        extra = results[ours]["per_request"]["Ir"] - plain["Ir"]
        print(f"\nC functions, exclusive Ir per call, {ours} minus {base} "
              f"(total {extra:+,.0f}):")
        for key, value in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:args.top]:
            print(f"{value:+10,.0f}  {key}")
    if args.json:
        args.json.write_text(json.dumps({"requests": args.requests, "warmup": WARMUP,
                                         "retried": args.retried, "env": extra_env,
                                         "git": _git_head(), "results": results}, indent=1))
    return 0


def _table(title: str, columns: list[str], rows: list[tuple[str, list[str]]]) -> None:
    """A markdown table on stdout, a row per variant, under ``title``."""
    print(title)
    print(f"| variant | {' | '.join(columns)} |")
    print(f"| --- | {' | '.join('---:' for _ in columns)} |")
    for name, cells in rows:
        print(f"| {name} | {' | '.join(cells)} |")


def _git_head() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "requests_smartretry"],
                               cwd=ROOT, capture_output=True, text=True, timeout=5).stdout
        return head + ("+dirty" if dirty.strip() else "")
    except OSError:
        return "?"


if __name__ == "__main__":
    raise SystemExit(main())
