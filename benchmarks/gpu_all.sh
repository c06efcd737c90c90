#!/usr/bin/env bash
# Every GPU figure of BENCHMARKS.md in one run on a lent GPU machine (issue 7):
#   here:   bash benchmarks/device_wheels.sh
#   device: run(command="bash benchmarks/gpu_all.sh throughput", carry=[".whl"])
#           run(command="bash benchmarks/gpu_all.sh sharing", carry=[".whl"])
#           run(command="bash benchmarks/gpu_all.sh packing", carry=[".whl"])
# (three calls: throughput, sharing, packing; each must end within the device's 10 minutes a
# command, and each part is sized to end within 8), then copy the new
# sections of $OUT/BENCHMARKS.md into BENCHMARKS.md here.
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
PART=${1:-throughput}
if [ "$PART" = throughput ]; then
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
timeout 540 python3 benchmarks/gpu_sharing.py --ks 1 2 4 2>&1 | tee "$OUT/gpu_sharing.log"
fi
cp BENCHMARKS.md "$OUT/"
