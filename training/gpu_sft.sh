#!/usr/bin/env bash
# One-shot policy SFT on a lent GPU (H100): full bootstrap set, 2 epochs, CUDA bf16, then export the
# LoRA adapter to a llama.cpp GGUF. Everything worth keeping lands in $OUT (small: adapter GGUF,
# peft adapter, train log, sha256s); checkpoints stay in $WORK.
#
#   OUT=/path/to/out bash training/gpu_sft.sh BASE_GGUF BOOTSTRAP_JSONL [GGUF_WHEEL_OR_DIR]
#
# BASE_GGUF: the SmolLM2-135M-Instruct Q4_1 GGUF (or an HF model dir, or a quoted glob of split
# parts, e.g. '.gpu/*/basepart_*', checked against BASE_SHA256); BOOTSTRAP_JSONL: the output
# of training/bootstrap.py. The third argument (or $WHEELS) is a gguf wheel, or a dir holding one,
# installed offline when `import gguf` fails (transformers needs it to read GGUF; export writes it).
# Env: PY (python, default python3), WORK (run dir, default /tmp/rstar-gpu-sft), EPOCHS (2),
# BATCH (32), SEQ (768), LR (2e-4), EXTRA_SFT_ARGS (appended to the sft command line).
set -euo pipefail

BASE=${1:?usage: OUT=dir bash training/gpu_sft.sh BASE_GGUF BOOTSTRAP_JSONL [GGUF_WHEEL]}
DATA=${2:?bootstrap JSONL missing}
WHEELS=${3:-${WHEELS:-}}
OUT=${OUT:?set OUT to the output folder}
PY=${PY:-python3}
WORK=${WORK:-/tmp/rstar-gpu-sft}
EPOCHS=${EPOCHS:-2}
BATCH=${BATCH:-32}
SEQ=${SEQ:-768}
LR=${LR:-2e-4}
cd "$(dirname "$0")/.."
mkdir -p "$OUT" "$WORK"

# The 98 MB base does not fit one device call's 64 MiB: BASE may be a quoted glob of parts
# (e.g. '.gpu/*/basepart_*', sorted order = file order), reassembled here and checked by sha256.
if [ ! -e "$BASE" ]; then
  # shellcheck disable=SC2206
  parts=( $BASE )
  [ -e "${parts[0]}" ] || { echo "base $BASE not found" >&2; exit 2; }
  cat "${parts[@]}" > "$WORK/base.gguf"
  want=${BASE_SHA256:-b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53}
  got=$(sha256sum "$WORK/base.gguf" | cut -d' ' -f1)
  [ "$got" = "$want" ] || { echo "reassembled base sha256 $got != $want (${#parts[@]} parts)" >&2; exit 2; }
  echo "base reassembled from ${#parts[@]} parts, sha256 ok"
  BASE="$WORK/base.gguf"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
T0=$SECONDS

if ! "$PY" -c "import gguf" 2>/dev/null; then
  whl=""
  if [ -n "$WHEELS" ]; then
    if [ -d "$WHEELS" ]; then whl=$(ls "$WHEELS"/gguf-*.whl 2>/dev/null | head -1 || true); else whl=$WHEELS; fi
  fi
  [ -n "$whl" ] || { echo "gguf is not importable and no gguf wheel was given" >&2; exit 2; }
  "$PY" -m pip install --no-index --no-deps --quiet "$whl" 2>/dev/null \
    || export PYTHONPATH="$whl${PYTHONPATH:+:$PYTHONPATH}"   # a pure-python wheel imports from the zip
  "$PY" -c "import gguf; print('gguf', gguf.__file__)"
fi

"$PY" - <<'EOF'
import torch, transformers, peft, sys
print("python", sys.version.split()[0], "torch", torch.__version__, "transformers", transformers.__version__,
      "peft", peft.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
EOF

echo "== sft: $DATA, $EPOCHS epochs, batch $BATCH, seq $SEQ"
# shellcheck disable=SC2086
"$PY" -m training.sft --base "$BASE" --data "$DATA" --out "$WORK/sft" \
  --device auto --precision auto --epochs "$EPOCHS" --batch-size "$BATCH" --grad-accum 1 \
  --max-seq-len "$SEQ" --lr "$LR" --warmup-steps 20 --save-every 100 --log-every 20 \
  --eval-size 128 ${EXTRA_SFT_ARGS:-} 2>&1 \
  | { grep --line-buffered -v -E "Converting and de-quantizing|Loading weights|Writing model shards" || true; }
T_SFT=$((SECONDS - T0))

echo "== export"
"$PY" -m training.export --adapter "$WORK/sft/adapter" --out "$OUT/policy-sft.gguf" --base "$BASE" \
  --info "$OUT/policy-sft.gguf.json"
rm -rf "$OUT/adapter"
cp -r "$WORK/sft/adapter" "$OUT/adapter"
cp "$WORK/sft/train_log.json" "$OUT/train_log.json"
(cd "$OUT" && sha256sum policy-sft.gguf adapter/adapter_model.safetensors train_log.json > SHA256SUMS)

"$PY" - "$OUT/train_log.json" "$T_SFT" "$((SECONDS - T0))" <<'EOF'
import json, sys
log = json.load(open(sys.argv[1]))
r = log["this_run"]
print(f"SUMMARY device={log['device']} examples={log['examples']} steps={log['steps']} "
      f"tokens={r['tokens']:,} train_s={r['seconds']} tok_per_s={r['tok_per_s']:,.0f} "
      f"final_loss={log['final_loss']} eval_loss={log['eval_loss']} sft_wall_s={sys.argv[2]} total_wall_s={sys.argv[3]}")
EOF
