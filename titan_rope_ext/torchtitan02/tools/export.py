"""``titan-rope export``: a torchtitan DCP checkpoint out as a Hugging Face model folder, on CPU.

    titan-rope export --job.config_file JOB.toml --checkpoint DUMP/checkpoint/step-N --out DIR \\
        [--dtype float32|bfloat16] [--force] [torchtitan overrides]
    titan-rope export --job.config_file JOB.toml --config-only [--out DIR]

Pass the training job as it trained (the trained length, ``training.seq_len``, is part of the RoPE of
``dynamic`` and ``longrope``). The folder holds:

* ``model.safetensors`` (``model-0000i-of-0000n.safetensors`` + index past 5 GB): the checkpoint's model
  tensors (a full or a model-only DCP checkpoint), converted to HF names and layout by torchtitan's own
  state-dict adapter of the model (``train_spec.state_dict_adapter.to_hf``), in ``--dtype``;
* ``config.json``: ``<model.hf_assets_path>/config.json`` when there is one (checked against the flavor's
  dims), else one made from the flavor, with the trained RoPE written so transformers computes it
  exactly (``titan_rope_ext.hf_export``: which keys and why), ``max_position_embeddings`` = the trained
  length, the theta actually used, and ``dtype``;
* the tokenizer files (and ``generation_config.json``) found in ``model.hf_assets_path``.

Everything is checked before any tensor is read: the job and its section (``launch.check.preflight``), that
the model has a transformers counterpart (llama3 -> Llama, qwen3 -> Qwen3), that an HF form of the trained
RoPE is exact, the base config.json's dims, ``--out`` (must not exist or be empty, unless ``--force``) and
the checkpoint's tensor names and shapes against the model. The folder is built in a temporary directory
beside ``--out`` and renamed at the end, so a failure leaves nothing in ``--out``.

``--config-only`` writes just config.json and the tokenizer files into a folder that already holds HF
weights, by default the job's ``checkpoint.last_save_in_hf`` folder
(``<dump_folder>/<checkpoint.folder>/step-<training.steps>``): the step for ``run_train.sh`` users, which
``titan-rope train`` runs itself after a job with ``last_save_in_hf``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from titan_rope_ext.config import RopeScaling
from titan_rope_ext.hf import load_config_json
from titan_rope_ext.hf_export import Architecture, HfRope, hf_rope_keys, merge_config
from titan_rope_ext.tools import hf_architectures
from titan_rope_ext.tools.hf_folder import (as_written, check_checkpoint, check_out, ExportError, load_model_tensors,
                                            tokenizer_files, write_config_and_tokenizer, write_folder, write_safetensors)

# ---- torchtitan 0.2 model args -> transformers architecture ----------------------------------------------------

def _llama3(args, shapes: dict[str, torch.Size]) -> Architecture:
    return hf_architectures.llama(dict(
        hidden_size=args.dim, num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads or args.n_heads, head_dim=args.dim // args.n_heads,
        intermediate_size=shapes["layers.0.feed_forward.w1.weight"][0], vocab_size=args.vocab_size,
        rms_norm_eps=args.norm_eps, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
        hidden_act="silu"))


def _qwen3(args, shapes: dict[str, torch.Size]) -> Architecture:
    if args.moe_enabled:
        raise ExportError("model.flavor is a qwen3 MoE flavor; titan-rope export supports dense qwen3 (transformers' "
                          "Qwen3) only")
    if not args.qk_norm:
        raise ExportError("the qwen3 flavor has qk_norm = False; transformers' Qwen3 always normalizes q and k")
    return hf_architectures.qwen3(dict(
        hidden_size=args.dim, num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
        num_key_value_heads=args.n_kv_heads, head_dim=args.head_dim, intermediate_size=args.hidden_dim,
        vocab_size=args.vocab_size, rms_norm_eps=args.norm_eps, tie_word_embeddings=args.enable_weight_tying,
        attention_bias=False, hidden_act="silu", use_sliding_window=False,
        layer_types=["full_attention"] * args.n_layers))


ARCHITECTURES: dict[str, Callable[[Any, dict[str, torch.Size]], Architecture]] = {"llama3": _llama3, "qwen3": _qwen3}
"""torchtitan model name -> its transformers architecture (models whose logits are checked against transformers)."""


def stock_rope(model_name: str, args) -> RopeScaling:
    """The RoPE stock torchtitan 0.2 gives the model (no converter): llama3 applies Llama 3.1 scaling with its
    ``rope_scaling_args``, qwen3 plain RoPE (both bitwise, tests/torchtitan02/models)."""
    if model_name == "llama3":
        scaling = args.rope_scaling_args
        return RopeScaling(rope_type="llama3", factor=scaling.scaling_factor, low_freq_factor=scaling.low_freq_factor,
                           high_freq_factor=scaling.high_freq_factor,
                           original_max_position_embeddings=scaling.original_max_position_embeddings)
    return RopeScaling()


# ---- the plan: everything checked before any tensor is read --------------------------------------------------

class Plan:
    """A parsed, checked export: the model, its HF config.json and where each piece comes from."""

    def __init__(self, job, dtype: str):
        from titan_rope_ext.torchtitan02.converter import check_job, NAME
        from titan_rope_ext.torchtitan02.models import adapter_for
        from titan_rope_ext.torchtitan02.tools._job import model_args_for

        self.job, self.dtype = job, dtype
        name = job.model.name
        if name not in ARCHITECTURES:
            raise ExportError(f"model.name = {name!r}: titan-rope export supports {', '.join(sorted(ARCHITECTURES))} "
                              "(the models whose logits are checked against transformers' Llama and Qwen3)")
        self.spec, self.model_args = model_args_for(job)  # max_seq_len = training.seq_len, as trained
        if self.spec.state_dict_adapter is None:
            raise ExportError(f"torchtitan's {name} train spec has no state_dict_adapter")
        with torch.device("meta"):
            model = self.spec.model_cls(self.model_args)
        self.shapes = {k: v.shape for k, v in model.state_dict().items()}
        self.arch = ARCHITECTURES[name](self.model_args, self.shapes)
        if NAME in job.model.converters:
            adapter, self.section = check_job(job)
        else:
            adapter, self.section = adapter_for(self.spec.model_cls, name), stock_rope(name, self.model_args)
        head_dim = adapter.head_dim(self.model_args)
        self.rope: HfRope = hf_rope_keys(self.section, head_dim, self.model_args.rope_theta,
                                         self.model_args.max_seq_len)
        self.assets = job.model.hf_assets_path
        base_path = Path(self.assets, "config.json") if self.assets else None
        self.base_source = str(base_path) if base_path and base_path.is_file() else None
        base = load_config_json(self.base_source) if self.base_source else None
        self.config = merge_config(base, self.arch, self.rope, dtype, source=self.base_source or "config.json")
        if base is None:
            self.config.update(self._token_ids())

    def _token_ids(self) -> dict[str, int]:
        if not self.assets or self.spec.build_tokenizer_fn is None or not Path(self.assets, "tokenizer.json").is_file():
            return {}
        tokenizer = self.spec.build_tokenizer_fn(self.job)
        ids = {"bos_token_id": getattr(tokenizer, "bos_id", None), "eos_token_id": getattr(tokenizer, "eos_id", None)}
        return {k: v for k, v in ids.items() if v is not None}

    def tokenizer_files(self) -> list[Path]:
        return tokenizer_files(self.assets)

    def describe(self) -> str:
        source = self.base_source or f"made from the {self.job.model.name} {self.job.model.flavor} flavor"
        return (f"{self.job.model.name} {self.job.model.flavor}, {self.section.describe()}, trained length "
                f"{self.rope.max_position_embeddings}; {self.rope.note}; rope_theta={self.rope.rope_theta!r}; "
                f"config.json: {source}")


# ---- reading, converting, writing --------------------------------------------------------------------------


def hf_tensors(plan: Plan, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` through torchtitan's state-dict adapter (HF names, q/k permutation), cast to the export dtype."""
    adapter = plan.spec.state_dict_adapter(plan.model_args, None)  # the assets path only shards HF saves
    # torchtitan 0.2.0's qwen3 ties the output to the embedding in parallelize, so its adapter still writes the
    # output; transformers ties lm_head itself: as_written keeps the embedding only
    return as_written(adapter.to_hf(state), plan.dtype, bool(plan.config.get("tie_word_embeddings")))


def export(plan: Plan, checkpoint: str, out: Path, force: bool) -> list[str]:
    """Writes the HF folder ``out`` from ``checkpoint`` (checked first); returns the file names."""
    check_out(out, force)
    dtypes = check_checkpoint(checkpoint, plan.shapes)

    def fill(folder: Path) -> list[str]:
        files = write_safetensors(hf_tensors(plan, load_model_tensors(checkpoint, dtypes)), folder)
        return files + write_config_and_tokenizer(plan.config, plan.tokenizer_files(), folder)

    return write_folder(out, force, fill)


def last_save_folder(job) -> Path:
    """Where torchtitan's ``checkpoint.last_save_in_hf`` writes the last step's safetensors."""
    return Path(job.job.dump_folder, job.checkpoint.folder, f"step-{job.training.steps}")


def write_config_only(plan: Plan, folder: Path) -> list[str]:
    """config.json (+ tokenizer files) into a folder that already holds HF safetensors."""
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise ExportError(f"{str(folder)!r} holds no .safetensors files; --config-only completes an HF folder "
                          "(a checkpoint.last_save_in_hf save); for a DCP checkpoint use --checkpoint")
    return write_config_and_tokenizer(plan.config, plan.tokenizer_files(), folder)


def mentions_last_save_in_hf(args: list[str]) -> bool:
    """Whether the command line or its TOML names ``last_save_in_hf`` at all (the only ways to set it)."""
    spellings = ("last_save_in_hf", "last-save-in-hf")
    if any(s in arg for arg in args for s in spellings):
        return True
    for i, arg in enumerate(args):
        key, eq, value = arg.partition("=")
        if key in ("--job.config_file", "--job.config-file"):
            path = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            return os.path.isfile(path) and any(s in Path(path).read_text() for s in spellings)
    return False


def complete_last_save(args: list[str]) -> Path | None:
    """After a training run: the config.json for the job's ``last_save_in_hf`` folder, when it has one.

    Called by ``titan-rope train``'s rank 0 once torchtitan's main returned. Returns the folder, or None
    when the job saves no HF folder.
    """
    from titan_rope_ext.torchtitan02.launch.check import preflight

    job = preflight(args)
    if not (job.checkpoint.enable and job.checkpoint.last_save_in_hf):
        return None
    plan = Plan(job, job.checkpoint.export_dtype)
    folder = last_save_folder(job)
    write_config_only(plan, folder)
    return folder


def run(opts, torchtitan_args: list[str]) -> int:
    """``titan-rope export`` with parsed options (see ``titan_rope_cli``) and the torchtitan arguments."""
    from titan_rope_ext.torchtitan02.launch.check import ConfigError, preflight
    from titan_rope_ext.tools import export_command

    return export_command.run(opts, lambda: preflight(torchtitan_args), sys.modules[__name__], (ConfigError,))


def main(argv: list[str] | None = None) -> int:
    """``python -m titan_rope_ext.torchtitan02.tools.export ...`` = ``titan-rope export ...``."""
    import titan_rope_cli

    return titan_rope_cli.main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
