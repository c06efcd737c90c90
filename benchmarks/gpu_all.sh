#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md on a lent GPU machine (issues 7, 30), in two calls:
#   here:   bash benchmarks/device_wheels.sh
#   device: run(command="bash benchmarks/gpu_all.sh all", carry=[".whl"], timeout_s=590)
#           run(command="bash benchmarks/gpu_all.sh sharing", carry=[".whl"], timeout_s=200)
# `all` runs throughput, then packing in what is left of 560 s (a session has 15 minutes of
# device time, the machine's start included); each part writes its section of BENCHMARKS.md
# as soon as it has it, so a part stopped by its timeout keeps what it measured. Then copy
# the new sections of $OUT/BENCHMARKS.md into BENCHMARKS.md here. One part alone:
# `gpu_all.sh throughput|packing|sharing`.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm, peft; print('torch', torch.__version__, 'timm', timm.__version__, 'peft', peft.__version__)" | tee -a "$OUT/gpu.txt"
PART=${1:-all}
if [ "$PART" = all ]; then
START=$SECONDS
# 0. Where one training step goes (45 s on the H200 of 2026-12-04).
timeout 90 python3 benchmarks/gpu_step_profile.py --device cuda 2>&1 | tee "$OUT/step_profile.log"
# 1. ViT-S/16 at 224, batch 128: ours vs the model card's pipeline, MFU, each change's share,
#    then the model card's trial at 50,000 images for one epoch (on 2026-12-04 the ablation
#    alone took most of 270 s and the 10-epoch trial, ~250 s at 2,000 img/s, did not fit).
timeout 240 python3 benchmarks/throughput.py --device cuda --ablation --full-trial \
    --full-epochs "${FULL_EPOCHS:-1}" --write 2>&1 | tee "$OUT/throughput.log"
cp BENCHMARKS.md "$OUT/"
# 2. The model card's grid one trial at a time, as processes, packed K = 2, 4, 10 and auto.
LEFT=$((560 - (SECONDS - START)))
echo "packing: $LEFT s left"
# On 2026-12-04 solo took 128 s and 4 processes 100 s at 10,000 images: 5,000 fit all ways.
timeout "$LEFT" python3 benchmarks/packing.py --device cuda --repeats 1 --ks 2 4 10 \
    --train-images "${PACK_IMAGES:-5000}" --write \
    2>&1 | tee "$OUT/packing.log"
elif [ "$PART" = throughput ]; then
# 1. ViT-S/16 at 224, batch 128: ours vs the model card's pipeline, MFU, each change's share,
#    and the model card's whole trial (50,000 images x 10 epochs).
timeout 420 python3 benchmarks/throughput.py --device cuda --ablation --full-trial --write \
    2>&1 | tee "$OUT/throughput.log"
elif [ "$PART" = packing ]; then
# 3. The model card's grid (ViT-S/16 at 224, 10 trials, 1 epoch, synthetic data) one trial at a
#    time, as 4 processes on the GPU, and packed K = 2, 4, 10 and auto on one backbone; MFU.
timeout 480 python3 benchmarks/packing.py --device cuda --repeats 1 --ks 2 4 10 --write \
    2>&1 | tee "$OUT/packing.log"
else
# 2. K = 1, 2, 4 workers sharing the GPU on the demo study (complete demo-size trials).
timeout "${SHARING_S:-540}" python3 benchmarks/gpu_sharing.py --ks 1 2 4 --epochs "${SHARING_EPOCHS:-20}" \
    --write 2>&1 | tee "$OUT/gpu_sharing.log"
fi
cp BENCHMARKS.md "$OUT/"
