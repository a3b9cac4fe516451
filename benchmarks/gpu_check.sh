#!/usr/bin/env bash
# The GPU check: run on a machine with one CUDA GPU, from the repository root.
#   bash benchmarks/gpu_check.sh [OUTDIR]
# It runs the CUDA tests, trains on tiny Shakespeare on the GPU (auto precision, fp32, compiled),
# and evaluates the GPU-trained bundle on the CPU with CUDA hidden.
set -u
out=${1:-/tmp/lstmgen-gpu}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 NO_COLOR=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, typer, sentencepiece, safetensors; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'typer', typer.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -5
for variant in "auto:" "fp32:--precision fp32" "compiled:--compile"; do
    name=${variant%%:*}; flags=${variant#*:}
    echo "== train on cuda ($name)"
    # shellcheck disable=SC2086
    python3 -m lstmgen train corpora/tinyshakespeare.txt -o "$out/$name.lstmgen" --device cuda --max-steps 300 \
        --val-every 100 --log-every 100 --seed 1 $flags 2>&1 | grep -v "^W" | tail -6
done
echo "== the GPU-trained bundle on the CPU (CUDA hidden)"
CUDA_VISIBLE_DEVICES="" python3 -m lstmgen eval -m "$out/auto.lstmgen" corpora/pride-and-prejudice.txt --device cpu --json --streams 16
CUDA_VISIBLE_DEVICES="" python3 -m lstmgen sample -m "$out/auto.lstmgen" --prompt "ROMEO:" --max-tokens 120 --seed 1 --temp 0.8
