#!/usr/bin/env bash
# The documentation site (MkDocs + mkdocstrings, mkdocs.yml), built with warnings as errors.
# The examples of README.md and docs/*.md run in the main test suite (pyproject's
# testpaths; conftest.py at the root), not here.  Run from .ci/run, in its virtualenv:
#   bash .ci/docs.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q -e ".[docs]"
mkdocs build --strict --site-dir "${DOCS_SITE_DIR:-/tmp/smartretry-docs-site}"
echo "docs: site built (strict), $(find "${DOCS_SITE_DIR:-/tmp/smartretry-docs-site}" -name index.html | wc -l) pages"
