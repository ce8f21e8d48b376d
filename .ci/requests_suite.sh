#!/usr/bin/env bash
# requests' own test suite (the sdist's tests/ of the installed requests), run three times
# on loopback: plain requests, SmartRetryAdapter(max_retries=0) as HTTPAdapter (must show
# 0 differences), and SmartRetryAdapter() with the default policy (only the differences
# README documents).  See .ci/requests_suite.py.
#   PYTHON=python bash .ci/requests_suite.sh      # the python whose requests/urllib3 to test
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PYTHON=${PYTHON:-python}
export PIP_DISABLE_PIP_VERSION_CHECK=1
requests_version=$("$PYTHON" -c 'import requests; print(requests.__version__)')
urllib3_version=$("$PYTHON" -c 'import urllib3; print(urllib3.__version__)')
work=${REQUESTS_SUITE_DIR:-/tmp/smartretry-requests-suite}/requests-$requests_version-urllib3-$urllib3_version
venv=$work/venv
if [ ! -x "$venv/bin/python" ]; then
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q "requests[socks]==$requests_version" \
        "urllib3==$urllib3_version" pytest "pytest-httpbin==2.1.0" "httpbin~=0.10.0" \
        pytest-mock trustme
fi
"$venv/bin/python" -m pip install -q --no-deps --force-reinstall --no-build-isolation . \
    >/dev/null 2>&1 || "$venv/bin/python" -m pip install -q --no-deps --force-reinstall .
if [ ! -d "$work/requests-$requests_version/tests" ]; then
    "$venv/bin/python" -m pip download -q --no-binary :all: --no-deps \
        "requests==$requests_version" -d "$work"
    tar -xzf "$work/requests-$requests_version.tar.gz" -C "$work"
fi
cd "$work/requests-$requests_version"
# Each run gets its own id: the comparison accepts only result files this invocation wrote
# (a run that crashes before writing its file cannot pass on an older run's results).
run_id="$$-$(date +%s%N)"
for mode in plain zero defaults; do
    out="$work/$mode.json"
    log="$work/$mode.log"
    rm -f "$out"
    echo "== requests $requests_version tests, $mode"
    set +e
    SMARTRETRY_SUITE_MODE=$mode SMARTRETRY_SUITE_OUT="$out" SMARTRETRY_SUITE_RUN="$run_id" \
        PYTHONPATH="$root/.ci" "$venv/bin/python" -m pytest tests -p requests_suite \
        -p no:cacheprovider -o addopts= -q -W ignore >"$log" 2>&1
    status=$?
    set -e
    tail -n 3 "$log"
    # 1 = some tests failed: compared below, not fatal (plain requests has its own
    # environment failures).  Anything else (interrupted, internal or usage error, nothing
    # collected) means the run did not happen as it should.
    if [ "$status" -ne 0 ] && [ "$status" -ne 1 ]; then
        echo "error: the $mode run exited with status $status, not a test result (see $log)" >&2
        exit 1
    fi
    if [ ! -s "$out" ]; then
        echo "error: the $mode run wrote no results to $out (see $log)" >&2
        exit 1
    fi
done
"$venv/bin/python" "$root/.ci/requests_suite.py" compare "$work/plain.json" "$work/zero.json" \
    "$work/defaults.json" "$root/README.md" --run "$run_id"
