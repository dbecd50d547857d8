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
