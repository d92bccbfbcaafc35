#!/usr/bin/env bash
# Main job: set up (once) and run the reference trainer's ECF study — base vs RPCL, seeds
# 42/123/456, text only — then copy the summary and plots to examples/mecpe/results/ecf/.
# Usage: bash examples/mecpe/run_ecf.sh [ECF_DATA_DIR] [OUT]   (default OUT: runs/ecf)
# Data: ECF_DATA_DIR, else $MECPE_DATA_DIR, else ECF 1.0 downloaded from NUSTM/MECPE (pinned
# commit, sha256-checked) into the cache ($MECPE_CACHE_DIR/ecf or ~/.cache/torch-pairconf/ecf).
set -euo pipefail
cd "$(dirname "$0")/../.."
# Resolve the data first (standard library only, no venv needed): offline, this fails in
# seconds with what to fetch and where, before minutes of setup.
data=$(python3 -m examples.mecpe.download ecf --resolve ${1:+--data-dir "$1"}) || exit 2
out=${2:-runs/ecf}
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
. .venv/bin/activate
# CPU torch first (a bare `pip install torch` would pull a multi-GB CUDA build).
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[examples]"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# One CPU code path on every x86 processor with AVX2 (torch's kernels, MKL, oneDNN): AVX-512
# machines would otherwise round differently and give other per-seed numbers (README,
# "Reproducibility"). An explicit setting in the environment wins.
if grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
    export ATEN_CPU_CAPABILITY=${ATEN_CPU_CAPABILITY:-avx2} MKL_CBWR=${MKL_CBWR:-AVX2} \
        ONEDNN_MAX_CPU_ISA=${ONEDNN_MAX_CPU_ISA:-AVX2}
fi
python -m examples.mecpe.study --dataset ecf --data-dir "$data" --out "$out" \
    --arms base,rpcl --seeds 42,123,456 --modalities T --threads "${THREADS:-2}"
mkdir -p examples/mecpe/results/ecf
cp "$out"/summary.json "$out"/summary.md "$out"/*.png examples/mecpe/results/ecf/
echo "summary: examples/mecpe/results/ecf/summary.md"
