"""``titan-rope eval``: how a trained checkpoint behaves at and past its training length.

    titan-rope eval --job.config_file JOB.toml --checkpoint DUMP/checkpoint/step-N \\
        [--lengths 256,512,1024,2048] [--out DIR] [torchtitan overrides]

The job is resolved as training resolves it (torchtitan's ConfigManager, the launcher's check, the
train spec's model args with ``update_from_config``); the model is built on the meta device, converted
by ``rope_scaling`` when the job lists it, checked against the torchtitan DCP checkpoint (the model's own
keys and shapes; a full or a model-only checkpoint), materialized (``to_empty`` + ``init_weights``) and loaded. The
rotary cache is built for the longest evaluated length (``model_args.max_seq_len``); ``dynamic`` and
``longrope``, whose numbers depend on that length, see the longest one, as transformers' dynamic RoPE
sees the current length.

Measured on a held-out corpus (documents generated like the training corpus, another seed) for each
length ``T`` in ``--lengths``:

* sliding-window perplexity (window ``T``, stride ``--stride``, every token scored once with as much
  left context as the window allows: the YaRN / LongLoRA evaluation), and perplexity by position
  bucket inside non-overlapping windows of ``T`` tokens (``--buckets`` equal buckets);
* passkey retrieval: a random five-digit key stated once at a relative depth of the filler text, the
  text ending with "What is the pass key? The pass key is"; the model's greedy continuation must be
  the key (``--trials`` per length and depth).

Output: a table on stdout, ``DIR/eval.json`` and ``DIR/eval.png`` (``--out``, default
``<job.dump_folder>/eval/<checkpoint folder name>``). CPU or GPU (``--device``). The options are
defined in ``titan_rope_cli`` so that ``--help`` answers without importing torch.
The measurements and the command's flow are line-agnostic: ``titan_rope_ext.tools.evaluation``.
"""

from __future__ import annotations

import sys

import torch

from titan_rope_ext.tools.evaluation import Built, EvalJob, materialize, run as run_eval


def build_model(job, max_len: int, device: torch.device | None = None):
    """The parsed job's model, converted as in training, for ``max_len`` positions, and its tokenizer: materialized
    on ``device``, or left on the meta device when None (``titan_rope_ext.tools.evaluation.materialize``)."""
    from titan_rope_ext.torchtitan02.converter import NAME, RopeScalingConverter
    from titan_rope_ext.torchtitan02.tools._job import model_args_for

    spec, model_args = model_args_for(job, max_seq_len=max_len)
    with torch.device("meta"):
        model = spec.model_cls(model_args)
    if NAME in job.model.converters:
        RopeScalingConverter(job, parallel_dims=None).convert(model)
    if device is not None:
        materialize(model, device)
    tokenizer = spec.build_tokenizer_fn(job) if spec.build_tokenizer_fn is not None else None
    return model, tokenizer


def read_job(torchtitan_args: list[str]) -> EvalJob:
    """The job as training resolves it; raises ConfigError on a bad one."""
    from titan_rope_ext.torchtitan02.launch.check import preflight

    job = preflight(torchtitan_args)
    section = getattr(job, "rope_scaling", None)
    converted = "rope_scaling" in job.model.converters and section is not None

    def build(max_len: int) -> Built:
        model, tokenizer = build_model(job, max_len)
        masks = None
        if getattr(model.model_args, "attn_type", "sdpa") in ("flex", "varlen"):
            # 0.2's masks follow the documents (EOS) inside each window, as in training
            def masks(tokens):
                return model.get_attention_masks(input_batch=tokens, tokenizer=tokenizer)
        return Built(model, tokenizer, masks,
                     rope=section.describe() if converted else "stock torchtitan (converter off)",
                     trained_length=section.original_max_position_embeddings if converted else None)

    return EvalJob(job.model.name, job.model.flavor, job.training.seq_len, job.job.dump_folder, build)


def run(opts, torchtitan_args: list[str]) -> int:
    """``titan-rope eval`` with parsed options (see ``titan_rope_cli``) and the torchtitan arguments."""
    return run_eval(opts, lambda device: read_job(torchtitan_args))


def main(argv: list[str] | None = None) -> int:
    """``python -m titan_rope_ext.torchtitan02.tools.evaluate ...`` = ``titan-rope eval ...``."""
    import titan_rope_cli

    return titan_rope_cli.main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
