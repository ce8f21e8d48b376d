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
for mode in plain zero defaults; do
    echo "== requests $requests_version tests, $mode"
    # Failures are compared, not fatal: plain requests has its own (environment) failures.
    SMARTRETRY_SUITE_MODE=$mode SMARTRETRY_SUITE_OUT="$work/$mode.json" \
        PYTHONPATH="$root/.ci" "$venv/bin/python" -m pytest tests -p requests_suite \
        -p no:cacheprovider -o addopts= -q -W ignore 2>&1 | tail -n 3 || true
done
"$venv/bin/python" "$root/.ci/requests_suite.py" compare "$work/plain.json" "$work/zero.json" \
    "$work/defaults.json" "$root/README.md"
