#!/usr/bin/env bash
# Run the test suite under urllib3 1.26.x (the oldest urllib3 the package supports), in a
# virtualenv of its own, against the repository's code.  Called by .ci/run.
#
# Subset (to keep CI fast): everything except
#   - tests marked `redis` (the shared-state Lua scripts do not touch urllib3), and
#   - tests/test_leaks.py (a 5,000-request soak, ~30 s; the connection handling it
#     exercises is covered under 1.26 by test_chaos.py and test_hostile.py).
# COMPAT_FULL=1 runs the whole suite.  COMPAT_VENV chooses (and reuses) the virtualenv.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${COMPAT_VENV:-${TMPDIR:-/tmp}/requests-smartretry-urllib3-1.26}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
# The package with its test extras, with urllib3 held below 2 in the same resolution.
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "${here}[test]" "urllib3>=1.26,<2"

"$venv/bin/python" - <<'PY'
import requests, urllib3
assert urllib3.__version__.startswith("1.26."), urllib3.__version__
print(f"compat: urllib3 {urllib3.__version__}, requests {requests.__version__}")
PY

cd "$here"
args=(-q -p no:cacheprovider)
if [ "${COMPAT_FULL:-0}" != "1" ]; then
    args+=(-m "not redis" --ignore=tests/test_leaks.py)
fi
# pytest's pythonpath = ["."] makes the checkout's package the one under test.
exec "$venv/bin/python" -m pytest "${args[@]}" "$@"
