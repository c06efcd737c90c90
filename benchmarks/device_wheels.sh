#!/usr/bin/env bash
# Wheels for a lent GPU machine, which reaches no package registry. Its image has torch,
# torchvision, timm, peft, pandas, scikit-learn, matplotlib, PIL and tqdm; the service's
# study-side packages travel as wheels in .whl/ (git-ignored via .git/info/exclude), for
# Python 3.12 on x86-64. Run here, then name .whl in the device call's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
EXCLUDE="$(git rev-parse --git-dir)/info/exclude"; mkdir -p "$(dirname "$EXCLUDE")"
grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
PACKAGES=(optuna==5.1.0 optuna-dashboard==0.21.0 sqlalchemy==2.1.9 alembic==1.20.1
          colorlog==6.12.0 mako==1.4.3 bottle==0.13.4 tomli-w==1.2.0 greenlet)
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "${PACKAGES[@]}"
du -sh .whl
