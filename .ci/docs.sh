#!/usr/bin/env bash
# The documentation site, built with warnings as errors (mkdocs.yml: strict), and every
# Python example of README.md and docs/ run as written (Sybil, against loopback fakes;
# conftest.py at the root).  Run from .ci/run, in its virtualenv:
#   bash .ci/docs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[docs,test]"
mkdocs build --strict --site-dir "${DOCS_SITE_DIR:-/tmp/smartretry-docs-site}"
python -m pytest -q -p no:cacheprovider README.md docs
