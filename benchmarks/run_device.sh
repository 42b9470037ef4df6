#!/usr/bin/env bash
# One GPU run of the quality suite (benchmarks/quality.py), sized for ~8 minutes on one H200 with 16 CPU cores.
#
#   MODEL_DIR=<all-MiniLM-L6-v2 folder> DATA_DIR=<shared data folder> OUT=<results folder> bash benchmarks/run_device.sh
#
# Runs from the repository root with PYTHONPATH=. (no install). Regimes in order of value: classification (3
# datasets x 9 models x 3 seeds = 81 trainings), retrieval (6 methods x 3 seeds), adaptive (3 trainings), finished
# (3 methods x 3 seeds); a regime is skipped, and says so, when its estimate no longer fits BUDGET_S. Each regime
# runs its trainings in parallel processes on the one GPU (MiniLM is tiny: one process leaves most of it idle) and
# fits its logistic-regression probes on the CPU inside the same processes.
#
# Estimates (GPU, from MiniLM-L6's step cost: ~25 ms per step of 32 x 64 tokens incl. Trainer overhead, ~4-5x
# throughput from 8 concurrent processes; probes ~4 s each on 2 cores): classification ~24k steps + 306 probes
# ~5.5 min; retrieval 18 x 84 steps + 18 SciFact encodings ~1.2 min; adaptive ~0.7 min; finished 9 x 304 steps + 9
# evaluations ~1.2 min. Per-phase wall times are printed as they finish.
#
# Then quantization-aware training (benchmarks/quality_qat.py, issue 28), full SciFact train pairs for 2 epochs and
# the full test corpus (300 queries, 5,183 abstracts), mrl/qat/st/plain x SEEDS run one after another (~25 s each:
# ~230 steps, one grid evaluation and one funnel measurement), then its STS-B regime (~10 s each).
# qat_binary3 then trains QAT again with the binary term weighted 3x, reusing qat's MRL runs (~25 s each).
# ONLY="qat qat_binary3 qat_stsb" runs just those (e.g. a session for that issue); DEVICE=cpu with QAT_ARGS="--limit-train
# 32 --limit-eval 20 --max-seq-length 16" tries the script on a CPU with a tiny setting.
set -uo pipefail

: "${MODEL_DIR:?set MODEL_DIR to the all-MiniLM-L6-v2 folder}"
: "${DATA_DIR:?set DATA_DIR to the shared data folder (banking77/, trec/, emotion/, scifact/, snli/, mrpc/, stsb/)}"
OUT="${OUT:-outputs/quality_device}"
BUDGET_S="${BUDGET_S:-480}"
SEEDS="${SEEDS:-3}"
ONLY="${ONLY:-}"
DEVICE="${DEVICE:-cuda}"
read -r -a QAT_EXTRA <<< "${QAT_ARGS:-}"
mkdir -p "$OUT/results" "$OUT/logs"

export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2  # per process; the suite's workers share 16 cores
PYTHON="${PYTHON:-python3}"
COMMON=(--model "$MODEL_DIR" --data "$DATA_DIR" --results "$OUT/results" --device "$DEVICE" --seeds "$SEEDS")
if [[ $DEVICE == cuda ]]; then COMMON+=(--bf16); fi
START=$(date +%s)

run() {  # [SCRIPT=benchmarks/x.py] run NAME ESTIMATE_S ARGS...: skip when the estimate no longer fits the budget
    local name=$1 estimate=$2 script=${SCRIPT:-benchmarks/quality.py}
    shift 2
    if [[ -n $ONLY && " $ONLY " != *" $name "* ]]; then return; fi
    local elapsed=$(( $(date +%s) - START ))
    if (( elapsed + estimate > BUDGET_S )); then
        echo "## SKIPPED $name: ${elapsed}s elapsed + ~${estimate}s estimated > BUDGET_S=${BUDGET_S}s"
        return
    fi
    local began=$(date +%s)
    echo "## $name (estimate ~${estimate}s, ${elapsed}s elapsed)"
    "$PYTHON" "$script" "$@" "${COMMON[@]}" --out "$OUT/scratch/$name" > "$OUT/logs/$name.log" 2>&1
    local rc=$?
    grep -E "^== .*: [0-9]+s$" "$OUT/logs/$name.log" | tail -n 3
    echo "## $name: rc=$rc, $(( $(date +%s) - began ))s"
    if (( rc != 0 )); then tail -n 40 "$OUT/logs/$name.log"; fi
}

nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
run classification 330 classification --workers 8
run retrieval 60 retrieval --workers 6
run adaptive 45 adaptive --workers 3
run finished 75 finished --workers 6
QAT=(--batch-size 16 --max-seq-length 64 --lr 5e-5 --epochs 2 --methods mrl,qat,st,plain "${QAT_EXTRA[@]}")
SCRIPT=benchmarks/quality_qat.py run qat $(( 100 * SEEDS )) "${QAT[@]}"
# The binary term weighted 3x (on CPU, 5 seeds: the larger binary gain at 128 / 64 / 32 for 0.6-1.5 float points,
# quality_qat_w3_seeds5.md), the MRL runs above reused (--reuse-runs takes qat runs only with the same QAT settings).
SCRIPT=benchmarks/quality_qat.py run qat_binary3 $(( 40 * SEEDS )) "${QAT[@]}" --methods mrl,qat \
    --precision-weights 1,1,3 --report-name qat_binary3 --reuse-runs "$OUT/results/quality_qat.json"
SCRIPT=benchmarks/quality_qat.py run qat_stsb $(( 40 * SEEDS )) --task stsb --report-name qat_stsb "${QAT[@]}"

echo "## total $(( $(date +%s) - START ))s"
for file in "$OUT"/results/quality_*.md; do
    echo; echo "################ $file"; cat "$file"
done
