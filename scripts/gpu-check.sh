#!/usr/bin/env bash
# The GPU checks of one session on a CUDA machine, as one script: the kernel benchmark (Triton vs torch, outputs
# compared on every case) and the verifier's CUDA-graph benchmark (graph replay vs eager per step, streams).
#   OUT=results/gpu bash scripts/gpu-check.sh
# Runs from a source checkout with the machine's own torch/triton/transformers (no install: the `specdec.*`
# namespace is assembled from links by scripts/link-namespace.sh, as for scripts/typecheck.sh).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$root/results/gpu}
mkdir -p "$OUT"
site=$(mktemp -d)
bash "$root/scripts/link-namespace.sh" "$site"
export PYTHONPATH=$site PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
cd "$site" || exit 1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    $PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
    $PY -c "
import torch
from specdec import kernels
x = torch.randn(2, 3, 1000, device='cuda')
kernels.greedy_verify(x, x[:, :2].argmax(-1), torch.tensor([2, 2], device='cuda'))
print('auto backend on CUDA:', kernels.last_backend())
"
} 2>&1 | tee "$OUT/gpu.txt"
timeout "${KERNELS_TIMEOUT:-240}" $PY -m specdec.bench.kernels --out "$OUT/kernels.json" 2>&1 | tee "$OUT/kernels.log"
if [ "${RUN_GRAPHS:-1}" = 1 ]; then
    timeout "${GRAPHS_TIMEOUT:-180}" $PY -m specdec.bench.cuda_graphs --out "$OUT/graphs.json" 2>&1 | tee "$OUT/graphs.log"
fi
