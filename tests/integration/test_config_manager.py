"""torchtitan's own ConfigManager parses our section; the launcher refuses bad jobs before launching."""

import json
import math
import subprocess
import sys
import textwrap

import pytest
from torchtitan.config import ConfigManager

from titan_rope_ext import RopeScaling, ROPE_TYPES
from titan_rope_ext.converter import check_job
from titan_rope_ext.launch.check import ConfigError, preflight
from tests.integration.conftest import CONFIGS, config, REPO, titan_rope

SHIPPED = sorted(CONFIGS.glob("*.toml"))


def test_every_rope_type_has_a_shipped_config():
    assert {p.stem.removeprefix("llama3_debug_") for p in SHIPPED} >= set(ROPE_TYPES)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_tomls_parse_and_pass_the_launcher_check(path):
    job = preflight(["--job.config_file", str(path)])  # torchtitan's ConfigManager + model checks
    assert isinstance(job.rope_scaling, RopeScaling)
    assert job.model.converters == ["rope_scaling"]
    assert path.stem.startswith(job.model.name + "_")
    assert job.rope_scaling.rope_type == path.stem.rsplit("_", 1)[1]


RECIPES = [p for p in SHIPPED if "_debug_" not in p.stem]


def test_recipes_are_shipped():
    assert {p.stem for p in RECIPES} >= {"llama3_8b_64k_yarn", "llama3_8b_64k_llama3", "qwen3_0.6b_128k_yarn"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipes_build_and_convert_the_real_flavor_on_meta(path):
    import copy

    import torch
    from torchtitan.protocols.train_spec import get_train_spec

    from titan_rope_ext import rope_frequencies
    from titan_rope_ext.converter import RopeScalingConverter

    job = preflight(["--job.config_file", str(path)])
    spec = get_train_spec(job.model.name)
    args = copy.deepcopy(spec.model_args[job.model.flavor])
    args.update_from_config(job)
    with torch.device("meta"):
        model = spec.model_cls(args)
    converter = RopeScalingConverter(job, parallel_dims=None)
    converter.convert(model)
    cache = getattr(model, converter.adapter.buffer)
    head_dim = converter.adapter.head_dim(args)
    assert cache.is_meta and cache.shape[0] == job.training.seq_len
    _, attention_factor = rope_frequencies(job.rope_scaling, head_dim, args.rope_theta, job.training.seq_len)
    expected = {"yarn": 1 + 0.1 * math.log(job.rope_scaling.factor or 1.0), "llama3": 1.0}[job.rope_scaling.rope_type]
    assert attention_factor == pytest.approx(expected)


def test_from_hf_assets_reads_the_model_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "rope_theta": 1000000, "max_position_embeddings": 40960,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}}))
    toml = tmp_path / "job.toml"
    text = (CONFIGS / "qwen3_0.6b_128k_yarn.toml").read_text()
    head, _, tail = text.partition("[rope_scaling]")
    toml.write_text(head + "[rope_scaling]\nfrom_hf_assets = true\n" + tail[tail.index("[optimizer]"):])
    job = preflight(["--job.config_file", str(toml), "--model.hf_assets_path", str(tmp_path)])
    adapter, resolved = check_job(job)
    assert adapter.name == "qwen3" and resolved.hf_config == str(tmp_path / "config.json")
    assert (resolved.rope_type, resolved.factor, resolved.original_max_position_embeddings, resolved.theta) == (
        "yarn", 4.0, 32768, 1000000)
    with pytest.raises(ConfigError, match="rope_scaling.hf_config: no such file"):
        preflight(["--job.config_file", str(toml), "--model.hf_assets_path", str(tmp_path / "missing")])


def test_cli_overrides_the_toml():
    job = ConfigManager().parse_args(["--job.config_file", str(config("yarn")), "--rope_scaling.factor", "8",
                                      "--rope_scaling.beta_fast", "64"])
    assert job.rope_scaling.factor == 8.0 and job.rope_scaling.beta_fast == 64.0
    assert job.rope_scaling.original_max_position_embeddings == 64  # untouched keys keep the TOML value
    job = ConfigManager().parse_args(["--job.config_file", str(config("linear")),
                                      "--rope_scaling.rope_type", "yarn",
                                      "--rope_scaling.original_max_position_embeddings", "128"])
    assert job.rope_scaling == RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=128)
    job = ConfigManager().parse_args(["--job.config_file", str(config("yarn")), "--rope_scaling.arithmetic", "deepseek"])
    assert job.rope_scaling.arithmetic == "deepseek"


def test_bad_cli_value_is_refused_by_the_config_manager(capsys):
    with pytest.raises(SystemExit):
        ConfigManager().parse_args(["--job.config_file", str(config("yarn")), "--rope_scaling.factor", "0.5"])
    assert "rope_scaling.factor must be >= 1.0, got 0.5" in capsys.readouterr().err.replace("\n", " ").replace("│", "")


def test_bad_toml_value_is_refused_by_the_config_manager(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(config("yarn").read_text().replace("beta_slow = 1.0", "beta_slow = 64.0"))
    with pytest.raises(ValueError, match=r"rope_scaling.beta_fast must be > beta_slow \(64.0\), got 32.0"):
        ConfigManager().parse_args(["--job.config_file", str(bad)])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--rope_scaling.rope_type", "linear"], "rope_scaling.beta_fast = 32.0 does not apply to rope_type 'linear'"),
        (["--model.converters", "float8"], "does not list 'rope_scaling'"),
        (["--model.name", "flux", "--model.flavor", "flux-debug"], "model.name = 'flux' has no rotary cache"),
        (["--rope_scaling.rope_type", "longrope", "--rope_scaling.short_factor", "1", "1",
          "--rope_scaling.long_factor", "2", "2", "--rope_scaling.beta_fast", "32", "--rope_scaling.beta_slow", "1"],
         "rope_scaling.beta_fast = 32.0 does not apply to rope_type 'longrope'"),
    ],
    ids=["foreign-key", "converter-missing", "unsupported-model", "foreign-key-after-type-switch"],
)
def test_preflight_refuses(args, message, capsys):
    with pytest.raises(ConfigError) as err:
        preflight(["--job.config_file", str(config("yarn")), *args])
    text = " ".join((str(err.value) + " " + capsys.readouterr().err).replace("│", "").split())
    assert " ".join(message.split()) in text


@pytest.mark.parametrize("nproc", [1, 2])
def test_launcher_exits_2_before_starting_torchtitan(nproc):
    run = titan_rope("--job.config_file", config("yarn"), "--rope_scaling.factor", "0.5", nproc=nproc)
    assert run.returncode == 2, run.output[-3000:]
    assert "rope_scaling.factor must be >= 1.0, got 0.5" in " ".join(run.output.replace("│", "").split())
    assert "Starting job" not in run.output and "torch.distributed" not in run.output


def test_custom_import_registers_the_converter_for_a_users_own_config_module(tmp_path):
    # a user with their own custom_config_module composes our section and imports the package
    (tmp_path / "my_job.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass, field
        from titan_rope_ext import RopeScaling

        @dataclass
        class JobConfig:
            rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    """))
    toml = tmp_path / "job.toml"
    toml.write_text(config("linear").read_text().replace(
        'custom_config_module = "titan_rope_ext.job_config"',
        'custom_config_module = "my_job"\n[experimental]\ncustom_import = "titan_rope_ext"'))
    script = textwrap.dedent(f"""
        import importlib, torch
        from torchtitan.protocols import model_converter
        assert "rope_scaling" not in model_converter._registry_model_converter_cls
        importlib.import_module("titan_rope_ext")  # what the Trainer does for experimental.custom_import
        assert "rope_scaling" in model_converter._registry_model_converter_cls
        from torchtitan.config import ConfigManager
        job = ConfigManager().parse_args(["--job.config_file", {str(toml)!r}])
        assert job.experimental.custom_import == "titan_rope_ext"
        converters = model_converter.build_model_converters(job, parallel_dims=None)
        from torchtitan.models.llama3 import llama3_args, Transformer
        with torch.device("meta"):
            model = Transformer(llama3_args["debugmodel"])
        converters.convert(model)
        print(type(model).__name__, model._rope_scaling.describe())
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": f"{tmp_path}:{REPO}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RopeScaledTransformer rope_type=linear factor=4.0" in proc.stdout
