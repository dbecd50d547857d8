"""``titan-rope train`` on torchtitan 0.3: the argument rewrite to the ``jobs`` form (pure Python)."""

from __future__ import annotations

import pytest

from titan_rope_ext.torchtitan03.launch.args import with_rope_section


@pytest.mark.parametrize("args, expected", [
    (["--module", "llama3", "--config", "llama3_debugmodel", "--training.steps", "3"],
     ["--module", "titan_rope_ext.torchtitan03.jobs", "--config", "llama3.llama3_debugmodel", "--training.steps", "3"]),
    (["--config=f", "--module=my.pkg"], ["--module", "titan_rope_ext.torchtitan03.jobs", "--config", "my.pkg.f"]),
    (["--module", "titan_rope_ext.torchtitan03.jobs", "--config", "qwen3.qwen3_debugmodel"],
     ["--module", "titan_rope_ext.torchtitan03.jobs", "--config", "qwen3.qwen3_debugmodel"]),
])
def test_titan_rope_train_rewrites_module_and_config_for_0_3(args, expected):
    assert with_rope_section(args) == expected


def test_module_and_config_are_required():
    with pytest.raises(ValueError, match="needs --module and --config"):
        with_rope_section(["--module", "llama3"])


def test_a_toml_job_is_refused_with_what_to_do_instead():
    with pytest.raises(ValueError, match=r"torchtitan 0.3 has no TOML jobs \(--job.config_file\): use --module"):
        with_rope_section(["--job.config_file", "configs/llama3_debug_yarn.toml"])


def _job(model: str):
    import importlib
    from types import SimpleNamespace

    spec = importlib.import_module(f"torchtitan.models.{model}").model_registry("debugmodel")
    return SimpleNamespace(model_spec=spec)


@pytest.mark.parametrize("model", ["llama3", "qwen3"])
def test_cpu_shim_swaps_flex_for_sdpa_where_flex_is_plain_causal(model):
    from torchtitan.models.common.attention import FlexAttention, ScaledDotProductAttention

    from titan_rope_ext.torchtitan03.launch.cpu import use_sdpa

    job = _job(model)
    n = sum(isinstance(layer.attention.inner_attention, FlexAttention.Config) for layer in job.model_spec.model.layers)
    assert n > 0 and use_sdpa(job) == n
    assert all(isinstance(layer.attention.inner_attention, ScaledDotProductAttention.Config)
               for layer in job.model_spec.model.layers)


@pytest.mark.parametrize("model", ["gpt_oss", "deepseek_v3"])
def test_cpu_shim_refuses_models_whose_flex_attention_sdpa_would_change(model):
    from titan_rope_ext.torchtitan03.launch.cpu import use_sdpa

    with pytest.raises(ValueError, match=rf"titan-rope train on CPU runs llama3, qwen3 .*; {model}'s attention does more"):
        use_sdpa(_job(model))
