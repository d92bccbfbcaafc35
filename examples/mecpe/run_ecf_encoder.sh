#!/usr/bin/env bash
# The trained-encoder study on ECF: base vs RPCL, seeds 42/123/456, text only, with the
# all-MiniLM-L6-v2 transformer trained end to end (instead of frozen sentence embeddings) —
# then copy the summary and plots to examples/mecpe/results/ecf_encoder/.
# Usage: bash examples/mecpe/run_ecf_encoder.sh [ECF_DATA_DIR] [OUT]   (default OUT: runs/ecf_encoder)
# Usage with SEEDS=42: the first seed pair only. With SETTINGS=FILE (a settings file, e.g.
# examples/mecpe/study_ranking.txt) its lines instead of base,rpcl, in OUT (default
# runs/ecf_encoder-<file name>) and examples/mecpe/results/ecf_encoder-<file name>/.
# Same setup as run_ecf.sh (examples/mecpe/setup.sh:
# data resolution, venv, CPU code path). The settings below come from the dev search
# (examples/mecpe/search_encoder.txt).
# Data-parallel instead (e.g. on GPUs): torchrun --nproc-per-node N -m examples.mecpe.train
# with the same options, one run at a time (a study runs its runs in one process).
set -euo pipefail
cd "$(dirname "$0")/../.."
. examples/mecpe/setup.sh
if [ -n "${SETTINGS:-}" ]; then
    name=$(basename "$SETTINGS" .txt)
    arms=(--settings "$SETTINGS") out=${2:-runs/ecf_encoder-$name}
    results=examples/mecpe/results/ecf_encoder-$name
else
    arms=(--arms base,rpcl) out=${2:-runs/ecf_encoder} results=examples/mecpe/results/ecf_encoder
fi
# Settings: search_encoder.txt's line top2-lr5e-5-e10 (see "WHAT RAN HERE" there: the six-epoch
# line top2-lr5e-5-e6 ended under-trained on dev, so ten epochs, chosen before any ten-epoch
# number). SEEDS=42 runs the first seed pair only; a later call with the default seeds resumes
# the same study (complete runs are skipped).
# fp32: bf16 autocast was ~10x slower on this project's CPUs (no native bf16).
python -m examples.mecpe.study --dataset ecf --data-dir "$data" --out "$out" \
    "${arms[@]}" --seeds "${SEEDS:-42,123,456}" --modalities T --threads "${THREADS:-2}" \
    --text-encoder transformer --encoder-model minilm --train-layers 2 --encoder-lr 5e-5 \
    --epochs 10 --lr-schedule linear --warmup-ratio 0.1 --precision fp32
mkdir -p "$results"
cp "$out"/summary.json "$out"/summary.md "$out"/*.png "$results"/
echo "summary: $results/summary.md"
