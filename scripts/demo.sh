#!/usr/bin/env bash
# Set up a virtual environment and run the offline demo study: the no-LoRA baseline plus a
# 3x3 rank x alpha grid on scikit-learn's digits with a tiny ViT, 2 CPU workers.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
.venv/bin/search grid --spec studies/demo.toml --ranks 2 4 8 --workers 2 --storage sqlite:///demo.db "$@"
.venv/bin/search export --study demo --storage sqlite:///demo.db --out demo-best.json --weights demo-best
