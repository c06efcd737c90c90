#!/usr/bin/env bash
# Refresh the documentation's pictures in docs/screenshots/ (the README shows one of them).
#
# An ordinary test run writes the browser test's screenshots only to pytest's temporary folder;
# this script runs the same test (tests/test_dashboard_browser.py: a demo study, its dashboard,
# a headless Chromium) with SEARCH_SCREENSHOTS_DIR=docs/screenshots, which makes the test copy
# them there. It needs Debian's chromium and chromium-driver (scripts/system-packages.sh) and
# fails, rather than leaving the old pictures, when the test skips or fails. Review the new
# pictures with `git diff --stat docs/screenshots` before committing them.
#
#   scripts/refresh_screenshots.sh                                  # into docs/screenshots/
#   SEARCH_SCREENSHOTS_DIR=/tmp/shots scripts/refresh_screenshots.sh   # elsewhere, to look first
set -euo pipefail
cd "$(dirname "$0")/.."
target=${SEARCH_SCREENSHOTS_DIR:-docs/screenshots}
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT
SEARCH_SCREENSHOTS_DIR=$target .venv/bin/python -m pytest -q -rs \
    tests/test_dashboard_browser.py "$@"
for name in study.png trials.png trial_artifacts.png study_note.png; do
    if [[ ! $target/$name -nt $stamp ]]; then
        echo "$target/$name was not refreshed (did the browser test skip?)" >&2
        exit 1
    fi
done
echo "refreshed $target/{study,trials,trial_artifacts,study_note}.png"
