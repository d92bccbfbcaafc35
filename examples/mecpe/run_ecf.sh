#!/usr/bin/env bash
# Main job: set up (once) and run the reference trainer's ECF study — base vs RPCL, seeds
# 42/123/456, text only — then copy the summary and plots to examples/mecpe/results/ecf/.
# Usage: bash examples/mecpe/run_ecf.sh [ECF_DATA_DIR] [OUT]   (default ../shared/data/ecf, runs/ecf)
set -euo pipefail
cd "$(dirname "$0")/../.."
data=${1:-${MECPE_DATA_DIR:-../shared/data/ecf}}
out=${2:-runs/ecf}
[ -f "$data/train.txt" ] || { echo "run_ecf.sh: no ECF train.txt in '$data'" >&2; exit 2; }
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
. .venv/bin/activate
# CPU torch first (a bare `pip install torch` would pull a multi-GB CUDA build).
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[examples]"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m examples.mecpe.study --dataset ecf --data-dir "$data" --out "$out" \
    --arms base,rpcl --seeds 42,123,456 --modalities T --threads "${THREADS:-2}"
mkdir -p examples/mecpe/results/ecf
cp "$out"/summary.json "$out"/summary.md "$out"/*.png examples/mecpe/results/ecf/
echo "summary: examples/mecpe/results/ecf/summary.md"
