#!/usr/bin/env bash
# Main job: set up (once) and run the reference trainer's ECF study — base vs RPCL, seeds
# 42/123/456, text only, frozen MiniLM sentence embeddings — then copy the summary and plots to
# examples/mecpe/results/ecf/.
# Usage: bash examples/mecpe/run_ecf.sh [ECF_DATA_DIR] [OUT]   (default OUT: runs/ecf)
# Data: ECF_DATA_DIR, else $MECPE_DATA_DIR, else downloaded on first use (examples/mecpe/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
. examples/mecpe/setup.sh
out=${2:-runs/ecf}
python -m examples.mecpe.study --dataset ecf --data-dir "$data" --out "$out" \
    --arms base,rpcl --seeds 42,123,456 --modalities T --threads "${THREADS:-2}"
mkdir -p examples/mecpe/results/ecf
cp "$out"/summary.json "$out"/summary.md "$out"/*.png examples/mecpe/results/ecf/
echo "summary: examples/mecpe/results/ecf/summary.md"
