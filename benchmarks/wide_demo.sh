#!/usr/bin/env bash
# Issue 28's measured run on the offline demo (CPU): a grid over learning rate x rank x adapted
# layers with 3 seeds, run twice in a row on the same machine, packed (--pack auto) and one
# trial at a time (--pack 1), each in a study of its own; prints each run's wall time, the
# packed study's leaderboard (with what mattered) and the default demo grid's recommendation
# for comparison. Usage: bash benchmarks/wide_demo.sh [FOLDER]   (default /tmp/wide-demo)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SEARCH="$ROOT/.venv/bin/search"
OUT="${1:-/tmp/wide-demo}"
rm -rf "$OUT" && mkdir -p "$OUT" && cd "$OUT"
GRID=(--spec "$ROOT/studies/demo.toml" --ranks 2 4 8 --alphas 8 --lrs 1e-3 3e-3 1e-2
      --targets-sets qkv all --seeds 3 --workers 2 -q)
for mode in auto 1; do
  start=$(date +%s.%N)
  "$SEARCH" grid "${GRID[@]}" --pack "$mode" --storage "sqlite:///pack-$mode.db" > "board-$mode.txt"
  end=$(date +%s.%N)
  awk -v m="$mode" -v s="$start" -v e="$end" 'BEGIN { printf "pack %s: %.1f s wall\n", m, e - s }' | tee -a times.txt
done
"$SEARCH" leaderboard --study demo --storage sqlite:///pack-auto.db
# The default demo grid (rank x alpha at the spec's lr, q,k,v), 3 seeds, for the recommendation.
"$SEARCH" grid --spec "$ROOT/studies/demo.toml" --seeds 3 --workers 2 -q \
  --storage sqlite:///default.db > board-default.txt
tail -3 board-default.txt
cat times.txt
