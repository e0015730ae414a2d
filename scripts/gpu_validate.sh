#!/usr/bin/env bash
# The GPU validation, end to end on one GPU (about 5-8 minutes; QUICK=1: three cases, under a minute):
# `memprof validate --device cuda` trains the GPU matrix (memprof/validate_cuda.py), writes
# profiles/measurements/validation-cuda-<gpu>.json and prints the README table from it.
#
#   bash scripts/gpu_validate.sh            # the whole matrix
#   QUICK=1 bash scripts/gpu_validate.sh    # the small form the tests run
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
gpu=$(python -c "import torch; from memprof.validate_cuda import slug; print(slug(torch.cuda.get_device_name()) if torch.cuda.is_available() else '')")
if [ -z "$gpu" ]; then
    echo "gpu_validate: no CUDA GPU (torch.cuda.is_available() is False)" >&2
    exit 2
fi
out="profiles/measurements/validation-cuda-${gpu}.json"
status=0
python -m memprof validate --device cuda ${QUICK:+--quick} --out "$out" || status=$?
if [ -f "$out" ]; then
    python scripts/render_cuda_validation.py "$out"
fi
exit "$status"
