#!/usr/bin/env bash
# Set up a virtual environment from the project's own files and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-packages.sh || true   # best effort: tests that need a missing one skip
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -m pytest -q "$@"
