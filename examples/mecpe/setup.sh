# Sourced by the study scripts (run_ecf.sh, run_ecf_encoder.sh): from the repository root, with
# the optional data folder as $1, it sets `data` (the resolved ECF folder) and prepares the
# environment. Data first (standard library only, no venv needed): offline, this fails in
# seconds with what to fetch and where, before minutes of setup. ECF_DATA_DIR ($1), else
# $MECPE_DATA_DIR, else ECF 1.0 downloaded from NUSTM/MECPE (pinned commit, sha256-checked) into
# the cache ($MECPE_CACHE_DIR/ecf or ~/.cache/torch-pairconf/ecf).
data=$(python3 -m examples.mecpe.download ecf --resolve ${1:+--data-dir "$1"}) || exit 2
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
