"""torchtitan's own ConfigManager parses our section; the launcher refuses bad jobs before launching."""

import json
import math
import subprocess
import sys
import textwrap

import pytest
from torchtitan.config import ConfigManager

from titan_rope_ext import RopeScaling, ROPE_TYPES
from titan_rope_ext.torchtitan02.converter import check_job
from titan_rope_ext.torchtitan02.launch.check import ConfigError, preflight
from tests.torchtitan02.integration.conftest import CONFIGS, config, REPO, titan_rope

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
    from titan_rope_ext.torchtitan02.converter import RopeScalingConverter

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


def _without_converter(tmp_path, name="yarn"):
    path = tmp_path / "no_converter.toml"
    path.write_text(config(name).read_text().replace('converters = ["rope_scaling"]', "converters = []"))
    return path


def test_section_without_its_converter_is_refused_by_torchtitans_config_manager(tmp_path):
    # the same check on every entry point: it runs when torchtitan's ConfigManager builds the job config
    with pytest.raises(ValueError, match=r"\[rope_scaling\] sets rope_type=yarn factor=4.0 .* but model.converters "
                                         r"= \[\] does not list 'rope_scaling', so torchtitan would train its stock RoPE"):
        ConfigManager().parse_args(["--job.config_file", str(_without_converter(tmp_path))])


def test_cli_that_drops_the_converter_is_refused(capsys):
    with pytest.raises(SystemExit):
        ConfigManager().parse_args(["--job.config_file", str(config("yarn")), "--model.converters", "float8"])
    err = " ".join(capsys.readouterr().err.replace("│", "").split())
    assert "model.converters = ['float8'] does not list 'rope_scaling'" in err


def test_no_section_and_no_converter_is_stock_torchtitan(tmp_path):
    text = config("yarn").read_text()
    head, _, tail = text.partition("[rope_scaling]")
    path = tmp_path / "stock.toml"
    path.write_text((head + tail[tail.index("[optimizer]"):]).replace('converters = ["rope_scaling"]', "converters = []"))
    job = ConfigManager().parse_args(["--job.config_file", str(path)])
    assert job.model.converters == [] and job.rope_scaling == RopeScaling()


def test_torchtitans_own_entry_point_refuses_the_section_without_the_converter(tmp_path):
    # `torchrun -m torchtitan.train` / run_train.sh run exactly this module's main
    proc = subprocess.run([sys.executable, "-m", "torchtitan.train", "--job.config_file", str(_without_converter(tmp_path))],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
    assert proc.returncode != 0
    assert "does not list 'rope_scaling', so torchtitan would train its stock RoPE" in proc.stdout + proc.stderr
    assert "Starting job" not in proc.stdout + proc.stderr


def test_a_users_own_config_module_gets_the_check_through_rope_scaling_field(tmp_path, monkeypatch):
    (tmp_path / "my_checked_job.py").write_text(textwrap.dedent("""
        from dataclasses import dataclass
        from titan_rope_ext.config import RopeScaling
        from titan_rope_ext.job_config import rope_scaling_field

        @dataclass
        class JobConfig:
            rope_scaling: RopeScaling = rope_scaling_field()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    toml = tmp_path / "job.toml"
    toml.write_text(_without_converter(tmp_path).read_text().replace(
        'custom_config_module = "titan_rope_ext.job_config"', 'custom_config_module = "my_checked_job"'))
    with pytest.raises(ValueError, match="does not list 'rope_scaling'"):
        ConfigManager().parse_args(["--job.config_file", str(toml)])


@pytest.mark.parametrize("edit, message", [
    (("factor = 4.0", "factr = 4.0"), "[rope_scaling] has no key 'factr'; did you mean 'factor'? (valid keys: apply, "),
    (("seq_len = 256", "seqlen = 256"), "[training] has no key 'seqlen'; did you mean 'seq_len'?"),
    (('custom_config_module = "titan_rope_ext.job_config"', ""),
     'there is no section [rope_scaling]; add [job] custom_config_module = "titan_rope_ext.job_config"'),
], ids=["rope-key", "torchtitan-key", "no-custom-config-module"])
def test_unknown_toml_keys_name_the_closest_valid_one(tmp_path, edit, message):
    path = tmp_path / "job.toml"
    path.write_text(config("yarn").read_text().replace(*edit))
    with pytest.raises(ConfigError) as err:
        preflight(["--job.config_file", str(path)])
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_missing_or_malformed_job_file_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--job.config_file: no such file"):
        preflight(["--job.config_file", str(tmp_path / "missing.toml")])
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 1")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        preflight(["--job.config_file", str(bad)])


@pytest.mark.parametrize("path", [p for p in SHIPPED if "_debug_" in p.stem], ids=lambda p: p.stem)
def test_shipped_debug_configs_are_seeded(path):
    job = preflight(["--job.config_file", str(path)])
    # torchtitan 0.2.0 reads training.seed (the job_config module copies [debug] seed there), later versions debug.seed
    assert (job.training.seed if hasattr(job.training, "seed") else job.debug.seed) == 0


def _dcp(folder, keys):
    import torch
    import torch.distributed.checkpoint as dcp

    dcp.save({k: torch.zeros(2) for k in keys}, checkpoint_id=str(folder))


def test_launcher_refuses_to_resume_from_a_model_only_last_checkpoint(tmp_path):
    from titan_rope_ext.torchtitan02.launch.check import resume_problem

    args = ["--job.config_file", str(config("yarn")), "--job.dump_folder", str(tmp_path), "--checkpoint.enable"]
    assert resume_problem(preflight(args)) is None  # no checkpoint folder yet
    _dcp(tmp_path / "checkpoint" / "step-5", ["tok_embeddings.weight"])  # what the default last save writes
    problem = resume_problem(preflight(args))
    assert f"would resume this job from {tmp_path}/checkpoint/step-5, which holds the model only" in problem
    assert "--checkpoint.initial_load_path" in problem and "--checkpoint.no_last_save_model_only" in problem
    assert resume_problem(preflight([*args, "--checkpoint.load_step", "0"])) is None  # seed checkpoints are model-only
    assert resume_problem(preflight(args[:-1])) is None  # checkpointing off: nothing is loaded
    _dcp(tmp_path / "checkpoint" / "step-10", ["model.tok_embeddings.weight", "optimizer.state", "dataloader.dp_rank_0",
                                               "lr_scheduler.x", "train_state.step"])
    assert resume_problem(preflight(args)) is None  # the newest one is a full checkpoint
    run = titan_rope(*args, "--checkpoint.load_step", "5")
    assert run.returncode == 2 and "holds the model only" in run.output and "Starting job" not in run.output


def test_converter_warns_when_training_past_the_scaled_window(caplog):
    import logging

    import torch

    from titan_rope_ext.torchtitan02.converter import RopeScalingConverter
    from titan_rope_ext.torchtitan02.tools._job import model_args_for

    for seq_len, warns in (("512", True), ("256", False)):
        job = preflight(["--job.config_file", str(config("yarn")), "--training.seq_len", seq_len])
        spec, args = model_args_for(job)
        with torch.device("meta"):
            model = spec.model_cls(args)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            RopeScalingConverter(job, parallel_dims=None).convert(model)
        assert ("rope_scaling: training.seq_len = 512 exceeds rope_scaling.original_max_position_embeddings (64) x "
                "rope_scaling.factor (4) = 256" in caplog.text) == warns, caplog.text
