#!/usr/bin/env bash
# Real torchtitan training runs with [rope_scaling] apply = "fused" against apply = "torchtitan"
# (the same job otherwise), through torchtitan's own entry point, on 1, 2 or 4 GPUs:
#   llama3 (adjacent pairs):  1 GPU + compile, FSDP2 over 2 GPUs, TP 2 (+ compile), AC full,
#                             CP 2 (its cache sharded along the sequence; flash SDPA, so not deterministic)
#   qwen3 (rotate-half):      FSDP2 over 2 GPUs + compile
#   deepseek_v3 (pairs, one tensor per call, DTensor q/k under TP): TP 2
#   gpt_oss (rotate-half, DTensor q/k under TP): TP 2 x FSDP 2 on 4 GPUs (non-deterministic: stock
#     gpt_oss NaNs with it). Not TP alone: torchtitan 0.2.2 runs TP without FSDP/CP in float32
#     (no autocast) while gpt_oss builds its blocks in bf16, so stock fails ("mat1 and mat2 must have
#     the same dtype"), as both runs did on an H200 x2 host.
# Prints per pair the largest loss difference over the steps and both last losses, and per run how
# many files of its own (fresh) Triton and Inductor caches name the fused kernel: > 0 shows the
# kernel was compiled in that run (eager launch or inside a compiled graph), 0 that it never ran.
# Usage: OUT=outputs/gpu_fused_runs STEPS=20 bash scripts/gpu_fused_runs.sh   (torchtitan 0.2.2 importable)
#   ONLY="llama3_tp2 qwen3_fsdp2" limits the runs; APPLIES="torchtitan fused_cacheless" pairs the cacheless
#   apply with the stock one instead (its runs' caches name _rotary_kernel too: one kernel, two modes).
set -u
OUT=${OUT:-outputs/gpu_fused_runs}
STEPS=${STEPS:-20}
mkdir -p "$OUT"
tmp=$(mktemp -d)
common=(--training.steps "$STEPS" --metrics.log_freq 1 --debug.seed 0
        --lr_scheduler.warmup_steps 2 --lr_scheduler.decay_ratio 0.0)

pair() {  # name ngpu config args...: one run per apply value
  local name=$1 ngpu=$2 config=$3; shift 3
  [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]] && return
  local applies=(${APPLIES:-torchtitan fused})
  for apply in "${applies[@]}"; do
    local caches="$tmp/$name-$apply-caches"
    TRITON_CACHE_DIR="$caches/triton" TORCHINDUCTOR_CACHE_DIR="$caches/inductor" \
      timeout "${RUN_TIMEOUT:-240}" python -m torch.distributed.run --standalone --nproc-per-node "$ngpu" \
      -m torchtitan.train --job.config_file "$config" --job.dump_folder "$tmp/$name-$apply" "${common[@]}" \
      --rope_scaling.apply "$apply" "$@" > "$OUT/$name-$apply.log" 2>&1
    local rc=$?
    echo "$name-$apply rc=$rc, files naming _rotary_kernel in its Triton/Inductor caches: $(grep -rl _rotary_kernel "$caches" 2>/dev/null | wc -l)"
  done
  python - "$OUT/$name-${applies[0]}.log" "$OUT/$name-${applies[1]}.log" "$name" "${applies[@]}" <<'EOF'
import re, sys
step = re.compile(r"step:\s*(\d+)\s+loss:\s*([-\d.naninf]+)")
runs = [{int(s): float(v) for s, v in step.findall(open(path, errors="replace").read())} for path in sys.argv[1:3]]
common = sorted(set(runs[0]) & set(runs[1]))
if not common:
    print(f"{sys.argv[3]}: no common steps ({sys.argv[4]} {len(runs[0])}, {sys.argv[5]} {len(runs[1])})")
else:
    diff = max(abs(runs[0][s] - runs[1][s]) for s in common)
    last = common[-1]
    print(f"{sys.argv[3]}: {len(common)} steps, max |loss diff| {diff:.2e}, step {last}: "
          f"{sys.argv[4]} {runs[0][last]:.5f} {sys.argv[5]} {runs[1][last]:.5f}, step 1: {runs[0][common[0]]:.5f}")
EOF
}

FSDP2=(--parallelism.data_parallel_shard_degree 2)
TP2=(--parallelism.tensor_parallel_degree 2 --parallelism.data_parallel_shard_degree 1)
pair llama3_compile 1 configs/llama3_debug_yarn.toml --compile.enable --debug.deterministic
pair llama3_fsdp2 2 configs/llama3_debug_yarn.toml "${FSDP2[@]}" --debug.deterministic
pair llama3_tp2_compile 2 configs/llama3_debug_yarn.toml "${TP2[@]}" --compile.enable --debug.deterministic
pair llama3_ac_full 1 configs/llama3_debug_yarn.toml --activation_checkpoint.mode full --debug.deterministic
pair llama3_cp2 2 configs/llama3_debug_yarn.toml --parallelism.context_parallel_degree 2 \
  --parallelism.data_parallel_shard_degree 1
pair qwen3_fsdp2_compile 2 configs/qwen3_debug_yarn.toml "${FSDP2[@]}" --compile.enable --debug.deterministic
pair qwen3_compile 1 configs/qwen3_debug_yarn.toml --compile.enable --debug.deterministic
pair deepseek_v3_1gpu 1 configs/deepseek_v3_debug_yarn.toml --debug.deterministic
pair deepseek_v3_tp2 2 configs/deepseek_v3_debug_yarn.toml "${TP2[@]}" --debug.deterministic
pair gpt_oss_tp2_fsdp2 4 configs/gpt_oss_debug_yarn.toml --parallelism.tensor_parallel_degree 2 \
  --parallelism.data_parallel_shard_degree 2
