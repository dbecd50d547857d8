"""``titan-rope export`` on torchtitan 0.3 jobs: a DCP checkpoint out as a Hugging Face model folder, on CPU.

    titan-rope export --module M --config F [--rope_scaling.<key> V ...] --checkpoint DUMP/checkpoint/step-N \\
        --out DIR [--dtype float32|bfloat16|float16] [--force] [torchtitan flags]
    titan-rope export --module M --config F [...] --config-only [--out DIR]

Pass the job as ``titan-rope train`` ran it: it is resolved the same way (``launch.check.preflight``: the ``jobs``
form, a ``RopeTrainer.Config``), and the model config is what ``RopeTrainer.__init__`` and ``Trainer.__init__``
make of it before building (the section's RoPE swapped in with ``max_seq_len = training.seq_len``,
``update_from_config``, ``--override.imports``), so the RoPE written is the one trained. The folder is 0.2's
(``titan_rope_ext.torchtitan02.tools.export``; the line-agnostic parts are ``titan_rope_ext.hf_export`` and
``titan_rope_ext.tools``): ``model.safetensors`` through the model spec's own state-dict adapter
(``Llama3StateDictAdapter``, ``Qwen3StateDictAdapter``: HF names, llama3's q/k permutation, a tied
``lm_head`` left out), config.json (``<hf_assets_path>/config.json`` checked against the model config, or made
from it) with the trained RoPE, and the tokenizer files of ``hf_assets_path``.

``--torchtitan-train``: the checkpoint comes from torchtitan's own ``torchtitan.train`` (torchrun,
``run_train.sh``) given these arguments, not from ``titan-rope train``. They are then parsed as given (no rewrite to
the ``jobs`` form, so no section unless the config function returns ``RopeTrainer.Config``), and the RoPE is what
the model config holds after ``Trainer.__init__``'s steps: a ``RopeScalingConverter``'s, ``--override.imports``', or
stock 0.3's own (``stock_section``: llama3's Llama 3.1 scaling, qwen3's plain RoPE).

Everything is checked before any tensor is read, and a failure leaves nothing in ``--out``.
"""

from __future__ import annotations

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
from titan_rope_ext.torchtitan03.tools._job import trained_model_config

# ---- torchtitan 0.3 model config -> transformers architecture ----------------------------------------------


def _uniform(model_config, what: str, value: Callable[[Any], Any]) -> Any:
    """``value(layer)`` of layer 0, after checking every layer has it (transformers has one per model)."""
    layers = model_config.layers
    first = value(layers[0])
    for i, layer in enumerate(layers[1:], start=1):
        if value(layer) != first:
            raise ExportError(f"layers.{i} has {what} = {value(layer)!r}, layers.0 {first!r}; transformers' models "
                              "have one per model")
    return first


def _dims(model_config) -> dict[str, Any]:
    """The HF keys both architectures share, from the 0.3 model config (``GQAttention`` layers)."""
    if moe := [i for i, layer in enumerate(model_config.layers) if getattr(layer, "moe", None) is not None]:
        raise ExportError(f"layers.{moe[0]}.moe is set: the flavor has MoE layers; titan-rope export supports dense "
                          "llama3 and qwen3 (transformers' Llama and Qwen3)")
    dim = model_config.dim
    n_heads = _uniform(model_config, "attention.n_heads", lambda layer: layer.attention.n_heads)
    eps = model_config.norm.eps
    for name in ("attention_norm", "ffn_norm"):
        _uniform(model_config, f"{name}.eps", lambda layer: getattr(layer, name).eps)
        if getattr(model_config.layers[0], name).eps != eps:
            raise ExportError(f"layers.0.{name}.eps = {getattr(model_config.layers[0], name).eps!r} differs from "
                              f"norm.eps = {eps!r}; transformers has one rms_norm_eps")
    return dict(
        hidden_size=dim, num_hidden_layers=len(model_config.layers), num_attention_heads=n_heads,
        num_key_value_heads=_uniform(model_config, "attention.n_kv_heads",
                                     lambda layer: layer.attention.n_kv_heads or layer.attention.n_heads),
        head_dim=_uniform(model_config, "attention.head_dim",
                          lambda layer: layer.attention.head_dim or dim // layer.attention.n_heads),
        intermediate_size=_uniform(model_config, "feed_forward.w1.out_features",
                                   lambda layer: layer.feed_forward.w1.out_features),
        vocab_size=model_config.vocab_size, rms_norm_eps=eps,
        tie_word_embeddings=bool(model_config.enable_weight_tying), attention_bias=False, hidden_act="silu",
    )


def _llama3(model_config) -> Architecture:
    if _uniform(model_config, "attention.qk_norm", lambda layer: layer.attention.qk_norm) is not None:
        raise ExportError("the llama3 model config normalizes q and k (attention.qk_norm); transformers' Llama does not")
    return hf_architectures.llama({**_dims(model_config), "mlp_bias": False})


def _qwen3(model_config) -> Architecture:
    qk_norm = _uniform(model_config, "attention.qk_norm", lambda layer: layer.attention.qk_norm)
    if qk_norm is None:
        raise ExportError("the qwen3 model config has no attention.qk_norm; transformers' Qwen3 always normalizes "
                          "q and k")
    dims = _dims(model_config)
    if qk_norm.eps != dims["rms_norm_eps"]:
        raise ExportError(f"attention.qk_norm.eps = {qk_norm.eps!r} differs from norm.eps = "
                          f"{dims['rms_norm_eps']!r}; transformers' Qwen3 has one rms_norm_eps")
    return hf_architectures.qwen3({**dims, "use_sliding_window": False,
                                   "layer_types": ["full_attention"] * dims["num_hidden_layers"]})


ARCHITECTURES: dict[str, Callable[[Any], Architecture]] = {"llama3": _llama3, "qwen3": _qwen3}
"""torchtitan model name (``model_spec.name``) -> its transformers architecture."""


# ---- the RoPE the model trained with ---------------------------------------------------------------------


def stock_section(rope_config) -> RopeScaling:
    """The RoPE a stock 0.3 ``ComplexRoPE.Config`` / ``CosSinRoPE.Config`` gives a ``GQAttention`` (llama3, qwen3),
    as a section: ``scaling = "llama"`` is Llama 3.1's rule with its four values (llama3's default in every
    flavor), ``"yarn"`` with ``rope_factor > 1`` 0.3's own YaRN frequencies (``arithmetic = "torchtitan"``) and no
    attention factor (``GQAttention`` never applies one), anything else plain RoPE (qwen3's default)."""
    if rope_config.scaling == "llama":
        return RopeScaling(rope_type="llama3", factor=float(rope_config.scaling_factor),
                           low_freq_factor=float(rope_config.low_freq_factor),
                           high_freq_factor=float(rope_config.high_freq_factor),
                           original_max_position_embeddings=rope_config.original_max_position_embeddings)
    if rope_config.scaling == "yarn" and rope_config.rope_factor > 1.0:
        return RopeScaling(rope_type="yarn", factor=float(rope_config.rope_factor),
                           original_max_position_embeddings=rope_config.original_seq_len,
                           beta_fast=float(rope_config.beta_fast), beta_slow=float(rope_config.beta_slow),
                           truncate=rope_config.truncate, attention_factor=1.0, arithmetic="torchtitan")
    return RopeScaling(rope_type="default")


def trained_rope(model_config) -> tuple[RopeScaling, int, float, int]:
    """``(section, head_dim, theta, max_seq_len)`` of the RoPE every attention of ``model_config`` trained with:
    ours (the section that decided it) or stock's (``stock_section``); ExportError when layers differ or a layer
    is no llama3/qwen3 attention."""
    from titan_rope_ext.torchtitan03.models import adapters, attentions, supported

    def section_of(fqn: str, attention) -> RopeScaling:
        rope = attention.rope
        for adapter in adapters():
            if type(attention) is adapter.attention and type(rope) is adapter.rope:
                return rope.rope_scaling
            if type(attention) is adapter.attention and type(rope) is adapter.stock_rope:
                return stock_section(rope)
        raise ExportError(f"{fqn} is {type(attention).__qualname__} with {type(rope).__qualname__}; titan-rope "
                          f"export supports {supported()}")

    found = [(fqn, section_of(fqn, attention), attention.rope) for fqn, _, attention in attentions(model_config)]
    if not found:
        raise ExportError("the model config has no attention layers")
    _, section, rope = found[0]
    for fqn, other, other_rope in found[1:]:
        if (other, other_rope.dim, other_rope.theta, other_rope.max_seq_len) != (
                section, rope.dim, rope.theta, rope.max_seq_len):
            raise ExportError(f"{fqn}.rope ({other.describe()}) differs from layers.0's ({section.describe()}); "
                              "transformers has one RoPE for all layers")
    return section, rope.dim, float(rope.theta), rope.max_seq_len


# ---- the plan: everything checked before any tensor is read ---------------------------------------------


class Plan:
    """A resolved, checked export of a torchtitan 0.3 job: the model, its HF config.json, where each piece comes from."""

    def __init__(self, config, dtype: str):
        spec = config.model_spec
        if spec is None or spec.name not in ARCHITECTURES:
            name = None if spec is None else spec.name
            raise ExportError(f"model {name!r}: titan-rope export supports {', '.join(sorted(ARCHITECTURES))} (the "
                              "models whose logits are checked against transformers' Llama and Qwen3)")
        if spec.state_dict_adapter is None:
            raise ExportError(f"torchtitan's {spec.name} model spec has no state_dict_adapter")
        self.config, self.spec, self.dtype = config, spec, dtype
        self.model_config = trained_model_config(config)
        with torch.device("meta"):
            model = self.model_config.build()
        self.shapes = {k: v.shape for k, v in model.state_dict().items()}
        if biased := [k for k in self.shapes if k.endswith(".bias")]:
            raise ExportError(f"the model has biases ({biased[0]}, ...), which the {spec.name} state-dict adapter "
                              "does not convert")
        self.arch = ARCHITECTURES[spec.name](self.model_config)
        self.section, head_dim, theta, seq_len = trained_rope(self.model_config)
        self.rope: HfRope = hf_rope_keys(self.section, head_dim, theta, seq_len)
        self.assets = config.hf_assets_path
        base_path = Path(self.assets, "config.json") if self.assets else None
        self.base_source = str(base_path) if base_path and base_path.is_file() else None
        base = load_config_json(self.base_source) if self.base_source else None
        self.hf_config = merge_config(base, self.arch, self.rope, dtype, source=self.base_source or "config.json")
        if base is None:
            self.hf_config.update(self._token_ids())

    def _token_ids(self) -> dict[str, int]:
        if not self.assets or not Path(self.assets, "tokenizer.json").is_file():
            return {}
        tokenizer = self.config.tokenizer.build(tokenizer_path=self.assets)
        ids = {"bos_token_id": getattr(tokenizer, "bos_id", None), "eos_token_id": getattr(tokenizer, "eos_id", None)}
        return {k: v for k, v in ids.items() if v is not None}

    def tokenizer_files(self) -> list[Path]:
        return tokenizer_files(self.assets)

    def hf_tensors(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` (torchtitan names) through the model spec's state-dict adapter, as the export writes it."""
        adapter = self.spec.state_dict_adapter(self.model_config, None)  # the assets path only shards HF saves
        return as_written(adapter.to_hf(state), self.dtype, bool(self.hf_config.get("tie_word_embeddings")))

    def describe(self) -> str:
        source = self.base_source or f"made from the {self.spec.name} {self.spec.flavor} model config"
        return (f"{self.spec.name} {self.spec.flavor}, {self.section.describe()}, trained length "
                f"{self.rope.max_position_embeddings}; {self.rope.note}; rope_theta={self.rope.rope_theta!r}; "
                f"config.json: {source}; tokenizer files from {self.assets}")


# ---- reading, converting, writing ----------------------------------------------------------------------


def export(plan: Plan, checkpoint: str, out: Path, force: bool) -> list[str]:
    """Writes the HF folder ``out`` from ``checkpoint`` (checked first); returns the file names."""
    check_out(out, force)
    dtypes = check_checkpoint(checkpoint, plan.shapes)

    def fill(folder: Path) -> list[str]:
        files = write_safetensors(plan.hf_tensors(load_model_tensors(checkpoint, dtypes)), folder)
        return files + write_config_and_tokenizer(plan.hf_config, plan.tokenizer_files(), folder)

    return write_folder(out, force, fill)


def last_save_folder(config) -> Path:
    """Where torchtitan 0.3's ``checkpoint.last_save_in_hf`` writes the last step's safetensors."""
    return Path(config.dump_folder, config.checkpoint.folder, f"step-{config.training.steps}")


def write_config_only(plan: Plan, folder: Path) -> list[str]:
    """config.json (+ tokenizer files) into a folder that already holds HF safetensors."""
    if not folder.is_dir() or not any(folder.glob("*.safetensors")):
        raise ExportError(f"{str(folder)!r} holds no .safetensors files; --config-only completes an HF folder "
                          "(a checkpoint.last_save_in_hf save); for a DCP checkpoint use --checkpoint")
    return write_config_and_tokenizer(plan.hf_config, plan.tokenizer_files(), folder)


def complete_last_save(args: list[str]) -> Path | None:
    """After a training run: the config.json for the job's ``last_save_in_hf`` folder, when it has one.

    Called by ``titan-rope train``'s rank 0 once torchtitan's main returned; returns the folder, or None when the
    job saves no HF folder.
    """
    from titan_rope_ext.torchtitan03.launch.check import preflight

    config = preflight(args)
    if not (config.checkpoint.enable and config.checkpoint.last_save_in_hf):
        return None
    folder = last_save_folder(config)
    write_config_only(Plan(config, config.checkpoint.export_dtype), folder)
    return folder


def run(opts, args: list[str]) -> int:
    """``titan-rope export`` on torchtitan 0.3 with parsed options (see ``titan_rope_cli``) and the job's arguments."""
    from titan_rope_ext.torchtitan03.launch.check import ConfigError, preflight
    from titan_rope_ext.tools import export_command

    job = lambda: preflight(args, as_given=opts.torchtitan_train)  # noqa: E731
    return export_command.run(opts, job, sys.modules[__name__], (ConfigError,))


def main(argv: list[str] | None = None) -> int:
    """``python -m titan_rope_ext.torchtitan03.tools.export ...`` = ``titan-rope export ...`` on 0.3."""
    import titan_rope_cli

    return titan_rope_cli.main(["export", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
