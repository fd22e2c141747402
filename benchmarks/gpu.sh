#!/usr/bin/env bash
# One GPU, one table: parallel-clients = auto vs 1 (small-cnn, mnist-cnn on the embedded
# digits task) and asyncfl vs Flower's FedAvg in Flower's simulation engine, torch-device = cuda.
# Needs only the README's install (pip install -e .); no network. About 4-6 minutes on one GPU.
#   benchmarks/gpu.sh                      # cuda
#   benchmarks/gpu.sh --device cpu --quick # a dry run anywhere
# Any other flag goes to benchmarks/gpu.py (--reps, --engine-reps, --no-engine, --out).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" benchmarks/gpu.py "$@"
