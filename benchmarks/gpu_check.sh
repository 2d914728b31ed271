#!/usr/bin/env bash
# GPU check: one script, at most ~10 minutes on one modern GPU (each step has its own time limit).
#
#   1. training iterations/s with AMP, ours against nnU-Net v2 on the same plans (Hippocampus 2d and
#      3d_fullres, benchmarks/train_throughput.py --device cuda), and whether the data pipeline keeps
#      up: the share of each iteration spent in forward/backward/step rather than waiting for a batch
#      (target >= 90%, i.e. the achieved rate is >= 90% of the pure forward/backward rate);
#   2. prediction seconds per case, ours against nnUNetv2_predict (benchmarks/predict_speed.py --device cuda);
#   3. 'medseg-auto experiment methods' at a real budget: BUSI + STU merged into the two-site BreastUS
#      (default plans, 2d; two training sites, so SiteAdversarial and the cross-site terms have something
#      to work on; in-domain results per site), Base FeatureDiscrepancy ExchangeableFeatureDiscrepancy
#      SemanticGuidedContrastiveRAM SiteAdversarial Dispersive, seed 0, 8 x 250 = 2000 iterations per
#      cell, all six cells at once (-j 6).
#
# usage (from the repository root, after installing both venvs as benchmarks/README.md describes):
#   bash benchmarks/gpu_check.sh                       # everything, results under benchmarks/_work/gpu_check/
#   PY=/opt/venv/bin/python NNUNET_VENV=/opt/nnunet DATA=/data/shared bash benchmarks/gpu_check.sh
#   STEPS="train predict" bash benchmarks/gpu_check.sh # a subset
#
# Environment: PY (our venv's python, default .venv/bin/python), NNUNET_VENV (default .venv-nnunet),
# DATA (the shared data folder with hippocampus/, busi_half/, stu_bus/; default ../shared/data),
# WORK (default benchmarks/_work/gpu_check), STEPS (default "train predict methods").
# Exit code: 2 when no CUDA device (or a venv or data folder) is found; 1 when a step failed.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PY:-.venv/bin/python}"
NNUNET_VENV="${NNUNET_VENV:-.venv-nnunet}"
DATA="${DATA:-$ROOT/../shared/data}"
WORK="${WORK:-$ROOT/benchmarks/_work/gpu_check}"
STEPS="${STEPS:-train predict methods}"
CORES="$(nproc)"
WORKERS=$(( CORES > 4 ? CORES - 2 : 2 ))
mkdir -p "$WORK/logs"
SUMMARY="$WORK/summary.md"
START=$(date +%s)
FAILED=0

fail() { echo "gpu_check: $*" >&2; exit 2; }
[ -x "$PY" ] || fail "$PY: no python of the project venv (set PY=...)"
"$PY" - <<'EOF' || fail "no CUDA device visible to torch: this check needs a GPU (nvidia-smi, CUDA_VISIBLE_DEVICES)"
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
for folder in hippocampus busi_half stu_bus; do [ -d "$DATA/$folder" ] || fail "$DATA/$folder: data folder not found (set DATA=...)"; done
[ -x "$NNUNET_VENV/bin/python" ] || fail "$NNUNET_VENV: no nnU-Net v2 venv (benchmarks/README.md, section 1; set NNUNET_VENV=...)"

GPU="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))')"
{ echo "# GPU check: $GPU, $CORES CPU cores, $(date -u +%Y-%m-%dT%H:%MZ)"; echo; } > "$SUMMARY"

run_step() {  # NAME LIMIT_S COMMAND...: run with a time limit, log, record failure
  local name="$1" limit="$2"; shift 2
  echo "== $name (limit ${limit}s): $*"
  local began=$(date +%s)
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  echo "   $name: exit $rc after $(( $(date +%s) - began )) s (log: $WORK/logs/$name.log)"
  if [ $rc -ne 0 ]; then FAILED=1; tail -n 20 "$WORK/logs/$name.log"; echo "- $name FAILED (exit $rc, see logs/$name.log)" >> "$SUMMARY"; fi
  return $rc
}

if [[ " $STEPS " == *" train "* ]]; then
  run_step train 150 "$PY" benchmarks/train_throughput.py --device cuda --skip-fp32 -c 2d 3d_fullres \
      --batch-size 2d=plan 3d_fullres=plan --epochs 2 --iterations 30 --val-iterations 1 \
      --num-workers "$WORKERS" --threads 2 --data "$DATA/hippocampus" --nnunet-venv "$NNUNET_VENV" \
      --work "$WORK/train_throughput"
  [ -f "$WORK/train_throughput/train_throughput.json" ] && "$PY" - "$WORK/train_throughput/train_throughput.json" >> "$SUMMARY" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print("## Training (AMP, same plans)\n\n| configuration | tool | it/s | vs nnU-Net | compute share (>= 0.90) |\n|---|---|---:|---:|---:|")
for r in rows:
    share = r["step_s"] / r["s_per_it"] if r.get("s_per_it") else None
    verdict = "" if share is None else (" ok" if share >= 0.9 else " DATA-BOUND")
    ratio = r.get("it_per_s_vs_nnunet")
    print(f"| {r['configuration']} | {r['tool']} | {r.get('it_per_s', 0):.2f} | "
          f"{'' if ratio is None else f'{ratio:.2f}'} | {'' if share is None else f'{share:.2f}'}{verdict} |")
print()
EOF
fi

if [[ " $STEPS " == *" predict "* ]]; then
  run_step predict 120 "$PY" benchmarks/predict_speed.py --device cuda -c 3d_fullres --cases 10 -np 4 \
      --data "$DATA/hippocampus" --nnunet-venv "$NNUNET_VENV" --work "$WORK/predict_speed"
  [ -f "$WORK/predict_speed/predict_speed.json" ] && "$PY" - "$WORK/predict_speed/predict_speed.json" >> "$SUMMARY" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
print("## Prediction (3d_fullres, 10 cases, mirroring)\n\n| tool | s/case | s/case after start-up |\n|---|---:|---:|")
for r in rows:
    after = r.get("s_per_case_after_startup")
    print(f"| {r['tool']} | {r.get('s_per_case', 0):.3f} | {'' if after is None else f'{after:.3f}'} |")
print()
EOF
fi

if [[ " $STEPS " == *" methods "* ]]; then
  export MEDSEG_AUTO_HOME="$WORK/home"
  MS=("$PY" -m medseg_auto)
  if [ ! -f "$WORK/home/.gpu_check_imported" ]; then
    rm -rf "$WORK/home"
    run_step import_busi 120 "${MS[@]}" import-folder --images "$DATA/busi_half" --name BUSI --site busi \
        -np "$WORKERS" --no-progress \
    && run_step import_stu 30 "${MS[@]}" import-folder --images "$DATA/stu_bus/images" --masks "$DATA/stu_bus/masks" \
        --name STU --site stu --mask-pattern 'mask_{n}' --resize-masks -np "$WORKERS" --no-progress \
    && run_step merge 60 "${MS[@]}" merge BUSI STU --name BreastUS --site BUSI=busi --site STU=stu --no-progress \
    && run_step preprocess 150 "${MS[@]}" plan_and_preprocess BreastUS -c 2d -np "$WORKERS" --no-progress \
    && touch "$WORK/home/.gpu_check_imported"
  fi
  ELAPSED=$(( $(date +%s) - START ))
  LIMIT=$(( 590 - ELAPSED )); [ $LIMIT -lt 60 ] && LIMIT=60
  run_step methods "$LIMIT" "${MS[@]}" experiment methods BreastUS --config 2d -p plans \
      --trainers Base FeatureDiscrepancy ExchangeableFeatureDiscrepancy SemanticGuidedContrastiveRAM SiteAdversarial Dispersive \
      --seeds 0 --epochs 8 --iters-per-epoch 250 --val-iters-per-epoch 10 -j 6 --num-workers 2 --device cuda --no-progress
  BOARD="$(ls "$WORK"/home/results/Dataset*_BreastUS/experiments/methods__2d__plans/leaderboard.md 2>/dev/null | head -1)"
  if [ -n "$BOARD" ] && [ -f "$BOARD" ]; then { echo "## experiment methods (2000 iterations per cell)"; echo; sed -n '3,$p' "$BOARD"; echo; } >> "$SUMMARY"; fi
fi

echo "total: $(( $(date +%s) - START )) s" | tee -a "$SUMMARY"
cat "$SUMMARY"
exit $FAILED
