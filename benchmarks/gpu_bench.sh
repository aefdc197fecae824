#!/usr/bin/env bash
# The GPU figures of docs/performance.md: ViT-B/32 (random init, no download), the paper's 12 frames at 224^2,
# batch 128, K = 157, in fp32 and bf16. Run from the repository root on a machine with one GPU:
#   bash benchmarks/gpu_bench.sh 2>&1 | tee gpu_bench.txt
# (a) measures B = 16, 32, 64 and reads the line at 128; (b) scores 1,000 x 1,000 with T-MASS's 20 draws.
set -euo pipefail
for precision in fp32 bf16; do
  python -m calm_study bench studies/anchor_ablation.yaml --preset demo --trial 3 --device cuda \
    --set model.clip=ViT-B-32-quickgelu --set model.pretrained=null --set data.num_frames=12 \
    --set train.batch_size=128 --set train.precision=$precision --only a,b --batches 16 32 64 --steps 5
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
