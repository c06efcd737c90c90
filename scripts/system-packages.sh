#!/usr/bin/env bash
# System packages the tests use, installed with apt-get where missing: the PostgreSQL server
# (throwaway clusters in tests/test_postgres.py), Chromium with its driver (the dashboard
# seen through a real browser, tests/test_dashboard_browser.py) and iptables (a network
# partition, tests/test_storage_faults.py; it skips where the kernel refuses the rule). Needs root or passwordless
# sudo; without either it says what it could not install and the tests that need it skip.
set -uo pipefail
missing=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v iptables >/dev/null 2>&1 || [ -x /usr/sbin/iptables ] || missing+=(iptables)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "system-packages: cannot install ${missing[*]} (not root, no passwordless sudo);" \
         "the tests that need them will skip" >&2
    exit 1
fi
echo "system-packages: installing ${missing[*]}" >&2
"${as_root[@]}" apt-get update -qq &&
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
