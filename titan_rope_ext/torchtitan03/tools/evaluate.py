"""``titan-rope eval`` on torchtitan 0.3 jobs: how a trained checkpoint behaves at and past its training length.

    titan-rope eval --module M --config F [--rope_scaling.<key> V ...] --checkpoint DUMP/checkpoint/step-N \\
        [--lengths 256,512,1024,2048] [--out DIR] [--torchtitan-train] [torchtitan flags]

Pass the job as ``titan-rope train`` ran it: it is resolved the same way (``launch.check.preflight``: the ``jobs``
form, a ``RopeTrainer.Config``) and the model config is what training makes of it (``tools._job``: the section's
RoPE swapped in, ``update_from_config``, ``--override.imports``), except that ``training.seq_len`` is the longest
evaluated length, so every cache has a row per position (``dynamic`` and ``longrope``, whose numbers depend on that
length, see the longest one, as on 0.2). The model is built on the meta device, checked against the DCP checkpoint
(names and shapes; full or model-only, the same keys as 0.2's), materialized (``to_empty``, ``init_weights``, which
builds the caches on the device) and loaded. ``--torchtitan-train``: the checkpoint comes from stock
``torchtitan.train`` given these arguments (as ``titan-rope export --torchtitan-train``): parsed as given, the RoPE
is what the model config holds (a ``RopeScalingConverter``'s, ``--override.imports``', or stock 0.3's own).

Attention. Each evaluation window is one causal sequence: positions 0..T-1, documents inside it not separated (the
held-out stream is read as one text, as the sliding-window metric means). On CPU the model gets causal SDPA in place
of FlexAttention, the CPU training shim (``launch.cpu.use_sdpa``), which accepts llama3 and qwen3 only: their flex
mask over one sequence is exactly causal. Other models (sinks, sliding windows, MoE untested on CPU) are refused
there. On CUDA the model keeps the attention it trained with, with the masks it builds itself from positions 0..T-1
(``get_attention_masks``, the Trainer's call): causal, plus what the model adds (gpt_oss's and muse_glimmer's
sliding windows). That is exact for every model, where SDPA would be exact for llama3 and qwen3 only.

The measurements, the table, the JSON and the plot are line-agnostic: ``titan_rope_ext.tools.evaluation``.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch

from titan_rope_ext.tools.evaluation import Built, EvalJob, run as run_eval


def window_masks(model_config, model) -> Callable[[torch.Tensor], Any] | None:
    """``tokens -> masks`` for a model whose attention takes masks (flex, varlen), built by the model from positions
    0..T-1 of each window (one sequence per window); None for one that takes none (SDPA: causal)."""
    from torchtitan.models.common.attention import FlexAttention, VarlenAttention
    from torchtitan.models.common.decoder import Decoder

    if not isinstance(model_config, Decoder.Config):
        return None
    inner = getattr(model_config.first_attention, "inner_attention", None)
    if not isinstance(inner, (FlexAttention.Config, VarlenAttention.Config)):
        return None

    def masks(tokens: torch.Tensor):
        batch, length = tokens.shape
        return model.get_attention_masks(positions=torch.arange(length, device=tokens.device).expand(batch, length))

    return masks


def rope_of(model_config) -> tuple[str, int | None]:
    """``(description, trained length)`` of the RoPE the model config's attentions compute: our section's (its
    original length), else stock 0.3's (no original length: the table's ratio is against training.seq_len)."""
    from titan_rope_ext.torchtitan03.models import attentions
    from titan_rope_ext.torchtitan03.rope import ScaledComplexRoPE, ScaledCosSinRoPE

    ropes = [attention.rope for _, _, attention in attentions(model_config)]
    ours = [rope for rope in ropes if isinstance(rope, (ScaledComplexRoPE.Config, ScaledCosSinRoPE.Config))]
    if ours:
        section = ours[0].rope_scaling
        return section.describe(), section.original_max_position_embeddings
    return f"stock torchtitan 0.3 RoPE (scaling={ropes[0].scaling!r})", None


def read_job(args: list[str], device: torch.device, as_given: bool = False) -> EvalJob:
    """``args`` (``titan-rope train`` form) resolved as training resolves them; raises ConfigError on a bad job and
    ValueError for a model that cannot run on ``device``."""
    from titan_rope_ext.torchtitan03.launch.check import preflight
    from titan_rope_ext.torchtitan03.launch.cpu import use_sdpa
    from titan_rope_ext.torchtitan03.tools._job import trained_model_config

    config = preflight(args, as_given=as_given)
    spec, training_seq_len = config.model_spec, config.training.seq_len
    if device.type == "cpu":
        use_sdpa(config, command="eval")

    def build(max_len: int) -> Built:
        config.training.seq_len = max_len  # the caches get a row per evaluated position
        try:
            model_config = trained_model_config(config)
        except ValueError as e:  # e.g. stock RoPE configs shorter than max_len (--torchtitan-train)
            raise ValueError(f"the model for {max_len} positions (the longest of --lengths): {e}") from e
        with torch.device("meta"):
            model = model_config.build()
        tokenizer = config.tokenizer.build(tokenizer_path=config.hf_assets_path)
        rope, trained_length = rope_of(model_config)
        return Built(model, tokenizer, window_masks(model_config, model), rope, trained_length)

    return EvalJob(spec.name, spec.flavor, training_seq_len, config.dump_folder, build)


def run(opts, args: list[str]) -> int:
    """``titan-rope eval`` on torchtitan 0.3 with parsed options (see ``titan_rope_cli``) and the job's arguments."""
    return run_eval(opts, lambda device: read_job(args, device, as_given=opts.torchtitan_train))


def main(argv: list[str] | None = None) -> int:
    """``python -m titan_rope_ext.torchtitan03.tools.evaluate ...`` = ``titan-rope eval ...`` on 0.3."""
    import titan_rope_cli

    return titan_rope_cli.main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
