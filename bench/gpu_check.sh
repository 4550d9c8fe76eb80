#!/usr/bin/env bash
# The GPU check (issue 15): on a CUDA machine, the scoring stage and the LoRA training step with
# the real architectures (random weights, nothing downloaded), printing images/s, steps/s and
# peak memory. Budget: under 8 minutes in all.
#
#   bash bench/gpu_check.sh [PYTHON]        (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-.venv/bin/python}
export PYTHONPATH=$PWD
"$py" -c "import torch, sys; ok = torch.cuda.is_available(); print('cuda:', ok, torch.cuda.get_device_name(0) if ok else ''); sys.exit(0 if ok else 3)" \
  || { echo "no CUDA device: this check is for a GPU machine"; exit 3; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
echo "== scoring: CLIP ViT-L/14 + LAION MLP + MUSIQ (random weights) + dlib faces, stage vs bare forward passes"
timeout 240 "$py" bench/score_throughput.py --aesthetic laion --technical musiq --random-weights \
  --device cuda --images 64 --batch-size 16 --size 1024
echo "== LoRA training at SDXL shape (2.6 B UNet, random weights, bf16, gradient checkpointing)"
timeout 240 "$py" bench/sdxl_lora_step.py --shape sdxl --steps 6 --resolution 1024
