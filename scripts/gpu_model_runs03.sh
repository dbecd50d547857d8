#!/usr/bin/env bash
# torchtitan 0.3 training pairs on one GPU, through torchtitan's own entry point (torchrun -m torchtitan.train).
#
# Per model (the debug flavor of each 0.3 model the package supports whose debug config trains on text):
#   stock       --module <model> --config <model>_debugmodel                               (converter off)
#   equiv       --module titan_rope_ext.torchtitan03.jobs --config <model>.<model>_debugmodel
#               + the stock-equivalent section (stock's cache bit for bit, softmax scale float-equal):
#     llama3:       llama3 8 / 1 / 4 / 8192
#     qwen3:        default
#     deepseek_v3:  yarn 40 over 4096, beta 32/1, mscale = mscale_all_dim = 0.7, arithmetic torchtitan
#     gpt_oss:      yarn 32 over 4096, beta 32/1, truncate false, arithmetic torchtitan
#     muse_glimmer: default
#   each compile off and on (--compile.enable), deterministic, seed 0: the losses must match;
#   yarn        the jobs form with YaRN 4x over SEQ/4 (compile off): the loss must fall.
# kimi_k2_5 (same MLA adapter as deepseek_v3) is left out: its debug config trains on a multimodal dataset
# (cc12m-test) with a multimodal tokenizer, neither of which the offline machine has.
# The debug configs name torchtitan's repository assets (./tests/assets, not in the wheel): every run gets the
# package's tokenizer and corpus (--hf_assets_path, --dataloader.dataset_path), the paths jobs.py substitutes.
#
# Usage (torchtitan 0.3 and its torch importable; the repo root on PYTHONPATH):
#   OUT=outputs/gpu_model_runs03 bash scripts/gpu_model_runs03.sh
#   PRINT_ONLY=1 bash scripts/gpu_model_runs03.sh    # print "<run name> <command>" lines, run nothing
# Knobs: MODELS, COMPILE_MODELS (compile-on pairs; default MODELS, empty for none), STEPS (10), SEQ (256),
#   BATCH (4), EXTRA (more torchtitan flags for every run), EVAL (1: titan-rope eval of the llama3 YaRN run's
#   checkpoint on CUDA, the FlexAttention path), DEADLINE (s from the start after which runs are cut: 510),
#   RUN_TIMEOUT (400), PYTHON (python3, the one holding torch on the GPU machine).
# Runs go concurrently (the GPU is shared; determinism makes each run's numbers independent of that): per model an
# eager chain (stock, then equiv and yarn, which reuse stock's compiled FlexAttention from inductor's cache) and a
# compile chain (stock, then equiv). Logs are packed into $OUT/logs03.tar.gz; scripts/summarize_runs03.py prints
# the table and writes $OUT/summary03.md and $OUT/losses03.json.
set -u
OUT=${OUT:-outputs/gpu_model_runs03}
STEPS=${STEPS:-10}
SEQ=${SEQ:-256}
BATCH=${BATCH:-4}
MODELS=${MODELS:-llama3 qwen3 deepseek_v3 gpt_oss muse_glimmer}
COMPILE_MODELS=${COMPILE_MODELS-$MODELS}  # set but empty: no compile-on runs
PY=${PYTHON:-python3}
DEADLINE=${DEADLINE:-510}
RUN_TIMEOUT=${RUN_TIMEOUT:-400}
PRINT_ONLY=${PRINT_ONLY:-0}
EVAL=${EVAL:-1}
read -r -a extra <<< "${EXTRA:-}"
cd "$(dirname "$0")/.." || exit 1
ASSETS=$(cd titan_rope_ext/assets && pwd -P)  # absolute and resolved, as jobs.py's substitutes
JOBS=titan_rope_ext.torchtitan03.jobs
WORK=${WORK:-$(if [ "$PRINT_ONLY" = 1 ]; then echo /tmp/gpu_model_runs03.work; else mktemp -d; fi)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-2}  # many runs share 16 cores

common=(--hf_assets_path "$ASSETS/tokenizer" --dataloader.dataset_path "$ASSETS/corpus"
        --training.steps "$STEPS" --training.seq_len "$SEQ" --training.local_batch_size "$BATCH"
        --metrics.log_freq 1 --debug.seed 0 --debug.deterministic --debug.deterministic_warn_only "${extra[@]}")
equiv_llama3=(--rope_scaling.rope_type llama3 --rope_scaling.factor 8 --rope_scaling.low_freq_factor 1
              --rope_scaling.high_freq_factor 4 --rope_scaling.original_max_position_embeddings 8192)
equiv_qwen3=(--rope_scaling.rope_type default)
equiv_deepseek_v3=(--rope_scaling.rope_type yarn --rope_scaling.factor 40
                   --rope_scaling.original_max_position_embeddings 4096 --rope_scaling.beta_fast 32
                   --rope_scaling.beta_slow 1 --rope_scaling.mscale 0.7 --rope_scaling.mscale_all_dim 0.7
                   --rope_scaling.arithmetic torchtitan)
equiv_gpt_oss=(--rope_scaling.rope_type yarn --rope_scaling.factor 32
               --rope_scaling.original_max_position_embeddings 4096 --rope_scaling.beta_fast 32
               --rope_scaling.beta_slow 1 --rope_scaling.truncate False --rope_scaling.arithmetic torchtitan)
equiv_muse_glimmer=(--rope_scaling.rope_type default)
yarn=(--rope_scaling.rope_type yarn --rope_scaling.factor 4
      --rope_scaling.original_max_position_embeddings $((SEQ / 4)))

spawn() { if [ "$PRINT_ONLY" = 1 ]; then "$@"; else "$@" & fi; }

launch() {  # name command...: run it with the time left (the log ends with its rc), or print it
  local name=$1; shift
  if [ "$PRINT_ONLY" = 1 ]; then echo "$name $(printf '%q ' "$@")"; return; fi
  local left=$((DEADLINE - SECONDS))
  ((left > RUN_TIMEOUT)) && left=$RUN_TIMEOUT
  if ((left < 30)); then echo "rc=skipped (deadline)" > "$WORK/$name.log"; echo "$name skipped"; return; fi
  timeout -k 15 "$left" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  echo "rc=$rc" >> "$WORK/$name.log"
  echo "$name rc=$rc after ${SECONDS}s"
}

train() {  # name module config flags...
  local name=$1 module=$2 config=$3; shift 3
  launch "$name" "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m torchtitan.train \
    --module "$module" --config "$config" "${common[@]}" --dump_folder "$WORK/$name" "$@"
}

eager_chain() {
  local m=$1; local -n equiv=equiv_$m
  train "${m}_stock_eager" "$m" "${m}_debugmodel"
  local ckpt=()
  [ "$m" = llama3 ] && [ "$EVAL" = 1 ] && ckpt=(--checkpoint.enable --checkpoint.interval "$STEPS")
  spawn train "${m}_equiv_eager" "$JOBS" "$m.${m}_debugmodel" "${equiv[@]}"
  spawn train "${m}_yarn_eager" "$JOBS" "$m.${m}_debugmodel" "${yarn[@]}" "${ckpt[@]}"
  wait
  if [ ${#ckpt[@]} -gt 0 ]; then  # the CUDA path of titan-rope eval (the model's FlexAttention, window masks)
    launch llama3_yarn_eval "$PY" -m titan_rope_cli eval --module llama3 --config llama3_debugmodel "${yarn[@]}" \
      --training.seq_len "$SEQ" --hf_assets_path "$ASSETS/tokenizer" \
      --checkpoint "$WORK/llama3_yarn_eager/checkpoint/step-$STEPS" --lengths "$SEQ,$((2 * SEQ)),$((4 * SEQ))" \
      --tokens 2048 --trials 2 --depths 0,0.5,1 --out "$OUT/eval_llama3_yarn"
  fi
}

compile_chain() {
  local m=$1; local -n equiv=equiv_$m
  train "${m}_stock_compile" "$m" "${m}_debugmodel" --compile.enable
  train "${m}_equiv_compile" "$JOBS" "$m.${m}_debugmodel" "${equiv[@]}" --compile.enable
}

if [ "$PRINT_ONLY" != 1 ]; then
  mkdir -p "$OUT"
  "$PY" -c "import torch, torchtitan; print('torch', torch.__version__, '| torchtitan', torchtitan.__version__, '|',
             torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" > "$WORK/versions.txt" 2>&1
  # the corpus's datasets cache, built once before the runs read it together
  "$PY" -c "import datasets, sys; datasets.load_dataset(sys.argv[1], split='train')" "$ASSETS/corpus" \
    > "$WORK/dataset_cache.log" 2>&1
fi
for m in $MODELS; do
  spawn eager_chain "$m"
  [[ " $COMPILE_MODELS " == *" $m "* ]] && spawn compile_chain "$m"
done
wait
[ "$PRINT_ONLY" = 1 ] && exit 0
"$PY" scripts/summarize_runs03.py "$WORK" --models "$MODELS" --md "$OUT/summary03.md" --json "$OUT/losses03.json"
tar czf "$OUT/logs03.tar.gz" -C "$WORK" --exclude '*/checkpoint' .
echo "total ${SECONDS}s; logs: $OUT/logs03.tar.gz"
