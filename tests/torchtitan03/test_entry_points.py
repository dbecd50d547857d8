"""The three torchtitan 0.3 ways in (the rope_scaling section, --override.imports, the model converter), the
supported-model check, and training past the flavor's RoPE length. Config work only: nothing is built."""

from __future__ import annotations

import dataclasses
import importlib

import pytest
from torchtitan.config import ConfigManager, OverrideConfig, apply_overrides
from torchtitan.models.common.attention import GQAttention
from torchtitan.models.common.rope import CosSinRoPE
from torchtitan.trainer import Trainer

from tests.torchtitan03.helpers import model_config
from titan_rope_ext import RopeScaling
from titan_rope_ext.torchtitan03.converter import RopeScalingConverter
from titan_rope_ext.torchtitan03.rope import ScaledComplexRoPE, ScaledCosSinRoPE
from titan_rope_ext.torchtitan03.trainer import RopeTrainer

OVERRIDE = "titan_rope_ext.torchtitan03.override.rope_scaling"
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
SUPPORTED = (r"supports llama3 \(GQAttention.Config \+ ComplexRoPE.Config\), qwen3 \(GQAttention.Config \+ CosSinRoPE.Config\), "
             r"deepseek_v3 \(deepseek_v3.model.Attention.Config \+ ComplexRoPE.Config\), "
             r"kimi_k2_5 \(deepseek_v3.model.Attention.Config \+ ComplexRoPE.Config\), "
             r"gpt_oss \(gpt_oss.model.Attention.Config \+ CosSinRoPE.Config\), "
             r"muse_glimmer \(muse_glimmer.model.Attention.Config \+ ComplexRoPE.Config\)")


def stock(module: str, function: str) -> Trainer.Config:
    return getattr(importlib.import_module(f"torchtitan.models.{module}.config_registry"), function)()


def parse(*args: str):
    return ConfigManager().parse_args(list(args))


def tyro_error(capsys) -> str:
    """tyro's error box as one line (it wraps the ValueError's text inside box borders)."""
    return " ".join(capsys.readouterr().err.replace("│", " ").split())


def ropes(config) -> list:
    return [layer.attention.rope for layer in config.model_spec.model.layers]


# --- the section: RopeTrainer.Config, through --module titan_rope_ext.torchtitan03.jobs ---

def test_jobs_gives_any_stock_config_function_a_rope_scaling_section():
    config = parse("--module", "titan_rope_ext.torchtitan03.jobs", "--config", "llama3.llama3_debugmodel",
                   "--rope_scaling.rope_type", "yarn", "--rope_scaling.factor", "4",
                   "--rope-scaling.original-max-position-embeddings", "32", "--training.steps", "3")
    assert type(config) is RopeTrainer.Config
    assert config.rope_scaling == RopeScaling(**YARN) and config.training.steps == 3
    assert config.model_spec.name == "llama3"  # stock's model spec, unchanged until the Trainer starts


@pytest.mark.parametrize("flag, value, message", [
    ("--rope_scaling.factor", "0.5", "rope_scaling.factor must be >= 1.0, got 0.5"),
    ("--rope_scaling.beta_fast", "0.5", "rope_scaling.beta_fast must be > beta_slow (1.0), got 0.5"),
    ("--rope_scaling.low_freq_factor", "1", "rope_scaling.low_freq_factor = 1.0 does not apply to rope_type 'yarn'"),
])
def test_section_values_are_validated_as_on_0_2(flag, value, message, capsys):
    with pytest.raises(SystemExit):  # tyro prints the ValueError and exits 2
        parse("--module", "titan_rope_ext.torchtitan03.jobs", "--config", "qwen3.qwen3_debugmodel",
              "--rope_scaling.rope_type", "yarn", "--rope_scaling.original_max_position_embeddings", "64",
              "--rope_scaling.factor", "4", flag, value)
    assert message in tyro_error(capsys)


def test_section_is_checked_against_the_model_at_parse_time(capsys):
    # longrope lists must have head_dim // 2 = 8 entries for the llama3 debug flavor
    with pytest.raises(SystemExit):
        parse("--module", "titan_rope_ext.torchtitan03.jobs", "--config", "llama3.llama3_debugmodel",
              "--rope_scaling.rope_type", "longrope", "--rope_scaling.short_factor", "1", "1",
              "--rope_scaling.long_factor", "2", "2", "--rope_scaling.original_max_position_embeddings", "32",
              "--rope_scaling.factor", "4")
    assert "rope_scaling.short_factor must have head_dim // 2 = 8 entries for this model, got 2" in tyro_error(capsys)


def test_trainer_swaps_every_rope_and_lifts_the_cap_to_training_seq_len():
    # qwen3 debug's RoPE max_seq_len is 4096; stock refuses training.seq_len 8192 in update_from_config
    config = stock("qwen3", "qwen3_debugmodel")
    config.training.seq_len = 8192
    with pytest.raises(ValueError, match="Training sequence length 8192 exceeds attention RoPE maximum"):
        config.model_spec.model.update_from_config(config=config)

    config = RopeTrainer.Config(**{f.name: getattr(stock("qwen3", "qwen3_debugmodel"), f.name)
                                   for f in dataclasses.fields(Trainer.Config) if f.init},
                                rope_scaling=RopeScaling(**YARN))
    config.training.seq_len = 8192
    from titan_rope_ext.torchtitan03.models import scale_model

    scale_model(config.model_spec.model, config.rope_scaling, max_seq_len=8192)  # what RopeTrainer.__init__ does
    config.model_spec.model.update_from_config(config=config)  # Trainer.__init__'s next step: passes now
    assert all(type(r) is ScaledCosSinRoPE.Config and r.max_seq_len == 8192 and r.rope_scaling.factor == 4.0
               for r in ropes(config))


def test_from_hf_assets_reads_the_jobs_hf_assets_path(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"rope_parameters": {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096,'
        ' "rope_theta": 1000000.0}, "max_position_embeddings": 32768}')
    config = parse("--module", "titan_rope_ext.torchtitan03.jobs", "--config", "qwen3.qwen3_debugmodel",
                   "--hf_assets_path", str(tmp_path), "--rope_scaling.from_hf_assets")
    section = config.resolved_rope_scaling()
    assert (section.rope_type, section.factor, section.theta) == ("yarn", 8.0, 1e6)
    with pytest.raises(SystemExit):  # no config.json there: refused at parse time
        parse("--module", "titan_rope_ext.torchtitan03.jobs", "--config", "qwen3.qwen3_debugmodel",
              "--hf_assets_path", str(tmp_path / "missing"), "--rope_scaling.from_hf_assets")


# --- refusals: what the package cannot handle, before anything is built ---

def test_qwen3_5_mrope_is_refused_by_every_path():
    # MRoPE (3-D text/image positions, partial rotary dims) is not one of the seven methods' caches
    pytest.importorskip("fla", reason="torchtitan's qwen3_5 imports flash-linear-attention")
    from torchtitan.models.qwen3_5 import model_registry

    config = Trainer.Config(model_spec=model_registry("debugmodel"))
    found = r"Qwen35Attention.Config with torchtitan.models.qwen3_5.rope.MRoPE.Config"
    with pytest.raises(ValueError, match=SUPPORTED + rf"; {config.model_spec.name} layers.\d+.attention is .*{found}"):
        RopeTrainer.Config(**{f.name: getattr(config, f.name) for f in dataclasses.fields(Trainer.Config) if f.init})
    with pytest.raises(ValueError, match=SUPPORTED + f".*is .*{found}"):
        apply_overrides(OverrideConfig(imports=[(OVERRIDE, YARN)]), config)
    with pytest.raises(ValueError, match=SUPPORTED + f".*is .*{found}"):
        RopeScalingConverter.Config(rope_scaling=RopeScaling(**YARN)).build().convert(config.model_spec.model)


def test_a_rope_subclass_and_a_model_without_attention_are_refused():
    class OtherRoPE(CosSinRoPE):  # a different cache contract, as qwen3_5's MRoPE is
        @dataclasses.dataclass(kw_only=True, slots=True)
        class Config(CosSinRoPE.Config):
            sections: int = 3

    config = model_config("qwen3", n_layers=1)
    config.layers[0].attention = dataclasses.replace(config.layers[0].attention,
                                                     rope=OtherRoPE.Config(dim=128, max_seq_len=64))
    with pytest.raises(ValueError, match=SUPPORTED + r".*GQAttention.Config with .*OtherRoPE.Config"):
        RopeScalingConverter.Config(rope_scaling=RopeScaling()).build().convert(config)
    flux = importlib.import_module("torchtitan.models.flux").model_registry("flux-dev").model
    with pytest.raises(ValueError, match=SUPPORTED + ".*has no attention with a RoPE"):
        RopeScalingConverter.Config(rope_scaling=RopeScaling()).build().convert(flux)


# --- --override.imports ---

def test_override_swaps_every_attentions_rope_after_update_from_config():
    config = stock("llama3", "llama3_debugmodel")
    config.model_spec.model.update_from_config(config=config)  # Trainer.__init__ order: this, then overrides
    lines = apply_overrides(OverrideConfig(imports=[(OVERRIDE, YARN)]), config)
    assert len(lines) == 6 and all("GQAttention.Config -> GQAttention.Config" in line for line in lines)
    assert all(type(r) is ScaledComplexRoPE.Config and r.rope_scaling == RopeScaling(**YARN)
               and r.max_seq_len == 2048 and r.scaling == "none" for r in ropes(config))


def test_override_from_the_cli_spelling_and_its_errors():
    config = parse("--module", "llama3", "--config", "llama3_debugmodel",
                   "--override.imports", OVERRIDE + '={"rope_type": "linear", "factor": 2}')
    assert config.override.imports == [(OVERRIDE, {"rope_type": "linear", "factor": 2})]
    with pytest.raises(ValueError, match="rope_scaling.beta_fast = 32.0 does not apply to rope_type 'linear'"):
        apply_overrides(OverrideConfig(imports=[(OVERRIDE, {"rope_type": "linear", "factor": 2, "beta_fast": 32})]),
                        stock("llama3", "llama3_debugmodel"))
    with pytest.raises(ValueError, match="unknown key 'factr'"):
        apply_overrides(OverrideConfig(imports=[(OVERRIDE, {"rope_type": "linear", "factr": 2})]),
                        stock("llama3", "llama3_debugmodel"))
    with pytest.raises(ValueError, match="from_hf_assets = true needs the job's hf_assets_path"):
        apply_overrides(OverrideConfig(imports=[(OVERRIDE, {"from_hf_assets": True})]), stock("qwen3", "qwen3_debugmodel"))


def test_override_conflicts_with_another_rope_override_and_composes_with_ffn_ones():
    config = stock("qwen3", "qwen3_debugmodel")
    with pytest.raises(ValueError, match="Nested overrides are order-dependent"):
        apply_overrides(OverrideConfig(imports=[(OVERRIDE, YARN),
                                                "torchtitan.overrides.helion_rope.helion_cos_sin_rope"]), config)
    config = stock("qwen3", "qwen3_debugmodel")
    lines = apply_overrides(OverrideConfig(imports=[(OVERRIDE, YARN),
                                                    "torchtitan.overrides.fused_swiglu.fused_swiglu"]), config)
    assert any("fused_swiglu" in line for line in lines) and all(type(r) is ScaledCosSinRoPE.Config
                                                                 for r in ropes(config))


def test_override_cannot_lift_the_cap():
    # documented limit: update_from_config refuses before any override runs
    config = parse("--module", "qwen3", "--config", "qwen3_debugmodel", "--training.seq_len", "8192",
                   "--override.imports", OVERRIDE + "=" + '{"rope_type": "yarn", "factor": 4, '
                   '"original_max_position_embeddings": 4096}')
    with pytest.raises(ValueError, match="exceeds attention RoPE maximum supported sequence length 4096"):
        config.model_spec.model.update_from_config(config=config)


# --- the ModelConfigConverter ---

def test_converter_in_model_registry_with_max_seq_len():
    from torchtitan.models.qwen3 import model_registry

    spec = model_registry("debugmodel", converters=[RopeScalingConverter.Config(
        rope_scaling=RopeScaling(**YARN), max_seq_len=8192)])
    assert all(type(r) is ScaledCosSinRoPE.Config and r.max_seq_len == 8192 for r in ropes_of(spec.model))
    with pytest.raises(ValueError, match="already ScaledCosSinRoPE.Config .*apply rope_scaling once"):
        RopeScalingConverter.Config(rope_scaling=RopeScaling()).build().convert(spec.model)
    with pytest.raises(ValueError, match="already ScaledCosSinRoPE.Config"):
        apply_overrides(OverrideConfig(imports=[(OVERRIDE, YARN)]), dataclasses.replace(
            stock("qwen3", "qwen3_debugmodel"), model_spec=spec))
    with pytest.raises(ValueError, match="max_seq_len must be a positive integer, got 0"):
        RopeScalingConverter.Config(max_seq_len=0)
    with pytest.raises(ValueError, match="from_hf_assets = true needs the job's hf_assets_path"):
        RopeScalingConverter.Config(rope_scaling=RopeScaling(from_hf_assets=True))


def ropes_of(model_config) -> list:
    return [layer.attention.rope for layer in model_config.layers]


def test_adapters_name_the_exact_classes():
    from titan_rope_ext.torchtitan03.models import adapters

    from torchtitan.models.common.rope import ComplexRoPE
    from torchtitan.models.deepseek_v3.model import Attention as MLA, DeepSeekV3Model
    from torchtitan.models.gpt_oss.model import Attention as SinkAttention
    from torchtitan.models.kimi_k2_7.model import KimiK25Model
    from torchtitan.models.muse_glimmer.model import Attention as IRoPEAttention

    assert [(a.name, a.attention, a.stock_rope, a.rope.__mro__[1], a.model) for a in adapters()] == [
        ("llama3", GQAttention.Config, ComplexRoPE.Config, ComplexRoPE.Config, None),
        ("qwen3", GQAttention.Config, CosSinRoPE.Config, CosSinRoPE.Config, None),
        ("deepseek_v3", MLA.Config, ComplexRoPE.Config, ComplexRoPE.Config, DeepSeekV3Model.Config),
        ("kimi_k2_5", MLA.Config, ComplexRoPE.Config, ComplexRoPE.Config, KimiK25Model.Config),
        ("gpt_oss", SinkAttention.Config, CosSinRoPE.Config, CosSinRoPE.Config, None),
        ("muse_glimmer", IRoPEAttention.Config, ComplexRoPE.Config, ComplexRoPE.Config, None)]
