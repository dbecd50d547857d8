#!/usr/bin/env bash
# Real torchtitan training runs of the models that stock torchtitan 0.2.2 cannot train on CPU
# (llama4 and deepseek_v3: MoE router; gpt_oss: FlexAttention backward), on one GPU, through
# torchtitan's own entry point (torchrun -m torchtitan.train) and our configs/<model>_debug_yarn.toml.
#
# Per model: stock torchtitan (converter off) vs the converter holding that model's built-in RoPE
# values (losses must match), and the shipped YaRN config (loss must fall).
#   llama4:      stock = llama3 method (16, 1, 1, 8192)                           seq 256
#   deepseek_v3: stock = YaRN factor 40 over 4096, mscale 0.7 (only past 4096),
#                stock's rounding order (arithmetic = deepseek)                    seq 8192
#   gpt_oss:     stock = YaRN factor 32 over 4096, beta 32/1, truncate false      seq 256
# Usage: OUT=outputs/gpu_model_runs STEPS=20 bash scripts/gpu_model_runs.sh   (torchtitan 0.2.2 importable)
#   MODELS="llama4 gpt_oss" limits the models; EXTRA="--optimizer.lr 3e-4" adds torchtitan args to every run.
set -u
OUT=${OUT:-outputs/gpu_model_runs}
STEPS=${STEPS:-20}
MODELS=${MODELS:-llama4 deepseek_v3 gpt_oss}
read -r -a extra <<< "${EXTRA:-}"
mkdir -p "$OUT"
tmp=$(mktemp -d)
# DETERMINISTIC=0 drops --debug.deterministic (stock gpt_oss gives NaN losses with it on an H200)
det=(--debug.deterministic); [ "${DETERMINISTIC:-1}" = 0 ] && det=()
common=(--training.steps "$STEPS" --metrics.log_freq 1 --debug.seed 0 "${det[@]}"
        --lr_scheduler.warmup_steps 2 --lr_scheduler.decay_ratio 0.0 "${extra[@]}")

run() {  # name config args...
  local name=$1 config=$2; shift 2
  timeout "${RUN_TIMEOUT:-240}" python -m torch.distributed.run --standalone --nproc-per-node 1 -m torchtitan.train \
    --job.config_file "$config" --job.dump_folder "$tmp/$name" "${common[@]}" "$@" > "$OUT/$name.log" 2>&1
  echo "$name rc=$?"
}
stock_of() {  # the same job with the converter off and without its [rope_scaling] section (refused otherwise)
  awk '/^\[/ { skip = ($0 == "[rope_scaling]") } !skip' "configs/$1_debug_yarn.toml" \
    | sed 's/^converters = \["rope_scaling"\]/converters = []/' > "$tmp/$1_stock.toml"
  echo "$tmp/$1_stock.toml"
}

wants() { [[ " $MODELS " == *" $1 "* ]]; }

if wants llama4; then
run llama4_stock "$(stock_of llama4)"
run llama4_equiv configs/llama4_debug_yarn.toml --rope_scaling.rope_type llama3 --rope_scaling.factor 16 \
  --rope_scaling.low_freq_factor 1 --rope_scaling.high_freq_factor 1 --rope_scaling.original_max_position_embeddings 8192
run llama4_yarn configs/llama4_debug_yarn.toml
fi

if wants deepseek_v3; then
ds_long=(--training.seq_len 8192 --training.local_batch_size 1)
run deepseek_v3_stock "$(stock_of deepseek_v3)" "${ds_long[@]}"
run deepseek_v3_equiv configs/deepseek_v3_debug_yarn.toml "${ds_long[@]}" --rope_scaling.factor 40 \
  --rope_scaling.original_max_position_embeddings 4096 --rope_scaling.arithmetic deepseek
run deepseek_v3_yarn configs/deepseek_v3_debug_yarn.toml
fi

if wants gpt_oss; then
run gpt_oss_stock "$(stock_of gpt_oss)"
run gpt_oss_equiv configs/gpt_oss_debug_yarn.toml --rope_scaling.factor 32 \
  --rope_scaling.original_max_position_embeddings 4096
run gpt_oss_yarn configs/gpt_oss_debug_yarn.toml
fi

python - "$OUT" "$MODELS" <<'PY'
import json, pathlib, re, sys
out = pathlib.Path(sys.argv[1])
losses = {}
for log in sorted(out.glob("*.log")):
    text = log.read_text()
    losses[log.stem] = {int(s): float(v) for s, v in re.findall(r"step:\s*(\d+)\s+loss:\s*([-\d.naninf]+)", text)}
    conv = re.search(r"rope_scaling: (.*)", text)
    losses[log.stem + "_converter"] = conv.group(1) if conv else None
json.dump(losses, open(out / "losses.json", "w"), indent=1)
print(f"{'run':22} {'steps':>5} {'loss@1':>9} {'loss@last':>9}  max |loss - stock|")
for model in sys.argv[2].split():
    stock = losses.get(f"{model}_stock", {})
    for kind in ("stock", "equiv", "yarn"):
        run = losses.get(f"{model}_{kind}", {})
        if not run:
            print(f"{model + '_' + kind:22} FAILED (see {model}_{kind}.log)")
            continue
        last = max(run)
        diff = max((abs(run[s] - stock[s]) for s in run if s in stock), default=float("nan")) if kind == "equiv" else None
        print(f"{model + '_' + kind:22} {last:>5} {run[1]:>9.5f} {run[last]:>9.5f}  {'' if diff is None else f'{diff:.2e}'}")
PY
