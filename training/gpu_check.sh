#!/usr/bin/env bash
# GPU check of the training pipeline in one short run (~5 min on one H200, measured): policy SFT steps
# on CUDA (bf16) -> adapter GGUF export -> a batch of MCTS rollouts on CUDA with the torch backend
# of the engine's search (rstar_app.models.torch_hf) using the adapter just trained -> extraction.
# Prints one CHECK line per stage and a SUMMARY; everything small lands in $OUT.
#
#   OUT=/path/to/out bash training/gpu_check.sh BASE DATA_JSONL [GGUF_WHEEL_OR_DIR]
#
# BASE, DATA_JSONL and the wheel argument are as for training/gpu_sft.sh (which this calls: the base
# may be a quoted glob of split parts, since one device call carries at most 64 MiB). Env:
# STEPS (SFT optimiser steps, 60), BATCH (32), PROBLEMS (practice problems for rollouts, 24),
# ROLLOUTS (8), CANDIDATES (4), SHARDS (rollout processes side by side, 1), PARALLEL (problems each
# process searches at once, their policy calls batched on the GPU, 24), CHUNK (tokens per batch chunk,
# between which calls leave and join, 32; 0 = none), SANDBOX (sandbox workers per process, 8),
# STEP_TOKENS (160), DEVICE (cuda; cpu runs the same path slowly, as the CI test does with a tiny
# model), PY, WORK.
#
# Run on the device (two calls, because the 98 MB base is split in two parts):
#   split -n 2 -d BASE_GGUF .gpu/a/basepart_ ... (see training/README.md, "GPU check")
set -euo pipefail

BASE=${1:?usage: OUT=dir bash training/gpu_check.sh BASE DATA_JSONL [GGUF_WHEEL]}
DATA=${2:?data JSONL missing}
WHEELS=${3:-${WHEELS:-}}
OUT=${OUT:?set OUT to the output folder}
PY=${PY:-python3}
WORK=${WORK:-/tmp/rstar-gpu-check}
STEPS=${STEPS:-60}
PROBLEMS=${PROBLEMS:-24}
ROLLOUTS=${ROLLOUTS:-8}
CANDIDATES=${CANDIDATES:-4}
SHARDS=${SHARDS:-1}
PARALLEL=${PARALLEL:-24}
CHUNK=${CHUNK:-32}
SANDBOX=${SANDBOX:-8}
DEVICE=${DEVICE:-cuda}
cd "$(dirname "$0")/.."
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
T0=$SECONDS

if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'CHECK cuda FAIL: torch sees no GPU')"
fi

# 1+2. SFT steps + export (gpu_sft.sh: reassembles a split base, installs gguf offline if needed)
OUT="$OUT" PY="$PY" WORK="$WORK" EPOCHS=1 BATCH=${BATCH:-32} \
  SEQ=${SEQ:-768} EXTRA_SFT_ARGS="--max-steps $STEPS --save-every 1000 --eval-size 32 --device $DEVICE ${EXTRA_SFT_ARGS:-}" \
  bash training/gpu_sft.sh "$BASE" "$DATA" "$WHEELS" | tee "$OUT/sft.log"
grep -q "^SUMMARY" "$OUT/sft.log" || { echo "CHECK sft+export FAIL"; exit 1; }
echo "CHECK sft+export ok ($((SECONDS - T0)) s)"
[ -e "$BASE" ] || BASE="$WORK/base.gguf"   # gpu_sft.sh reassembled the parts here

# 3. a batch of rollouts on the device with the fresh adapter: SHARDS processes, PARALLEL searches each
T1=$SECONDS
"$PY" -m training.practice --n "$PROBLEMS" --seed 0 --out "$WORK/practice.jsonl" >/dev/null
rm -f "$OUT"/rollouts.shard*.jsonl
pids=()
for ((i = 0; i < SHARDS; i++)); do
  "$PY" -m training.rollouts --problems "$WORK/practice.jsonl" --out "$OUT/rollouts.shard$i.jsonl" \
    --base "$BASE" --policy-adapter "$OUT/adapter" --backend torch --device "$DEVICE" --dtype auto \
    --shard "$i/$SHARDS" --rollouts "$ROLLOUTS" --candidates "$CANDIDATES" --max-step-tokens "${STEP_TOKENS:-160}" \
    --parallel "$PARALLEL" --chunk-tokens "$CHUNK" --sandbox-workers "$SANDBOX" --time-limit 120 --n-ctx 2048 --no-progress > "$OUT/rollouts.$i.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || { tail -20 "$OUT"/rollouts.*.log; echo "CHECK rollouts FAIL"; exit 1; }; done
T_ROLL=$((SECONDS - T1))
cat "$OUT"/rollouts.shard*.jsonl > "$OUT/rollouts.jsonl"

# 4. extraction over those traces (SFT selection + PPM pairs)
"$PY" -m training.extract --traces "$OUT/rollouts.jsonl" --sft-out "$OUT/sft_extracted.jsonl" \
  --pairs-out "$OUT/pairs.jsonl" > "$OUT/extract.json"

"$PY" - "$OUT" "$T_ROLL" "$((SECONDS - T0))" <<'EOF'
import json, sys
from pathlib import Path
out, t_roll, total = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
rows = [json.loads(l) for l in (out / "rollouts.jsonl").read_text().splitlines() if l.strip()]
err = [r for r in rows if "error" in r]
tokens = sum(r["trace"]["meta"].get("stats", {}).get("tokens", 0) for r in rows if "trace" in r)
solved = sum(bool(r.get("solved")) for r in rows)
ex = json.loads((out / "extract.json").read_text() or "{}")
logs = [json.loads(p.read_text().strip().splitlines()[-1]) for p in sorted(out.glob("rollouts.*.log"))]
b = [s.get("batches", {}) for s in logs]
rows_per_batch = sum(x.get("rows", 0) for x in b) / max(sum(x.get("batches", 0) for x in b), 1)
cut = sum(r["trace"]["meta"].get("stopped") == "time limit" for r in rows if "trace" in r)
print(f"CHECK rollouts {'ok' if rows and not err else 'FAIL'}: {len(rows)} problems, {len(err)} errors, "
      f"{solved} solved, {tokens:,} tokens in {t_roll:.0f} s ({tokens / max(t_roll, 1e-9):,.0f} tok/s over all shards), "
      f"{rows_per_batch:.1f} rows per policy batch, {cut} searches cut by the time limit")
print(f"SUMMARY rollouts={len(rows)} errors={len(err)} solved={solved} tokens={tokens} rollout_s={t_roll:.0f} "
      f"rows_per_batch={rows_per_batch:.1f} time_limit_cut={cut} extract={json.dumps(ex, sort_keys=True)} total_wall_s={total}")
sys.exit(1 if err or not rows else 0)
EOF
