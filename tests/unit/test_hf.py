"""[rope_scaling] hf_config: a config.json means here exactly what it means to transformers (5.24.0)."""

import json

import pytest
import torch
from transformers import AutoConfig, LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from titan_rope_ext import RopeScaling, rope_frequencies
from titan_rope_ext.hf import rope_keys_from_hf, TRANSFORMERS_DEFAULT_THETA

# rope-related fields of public config.json files (Phi-3 factors shortened to a made-up 48-entry list)
PHI3_LONG = [1.0 + 0.05 * i for i in range(48)]
PHI3_SHORT = [1.0 + 0.001 * i for i in range(48)]
CONFIGS = {
    "llama3.1-8b": dict(head_dim=128, rope_theta=500000.0, max_position_embeddings=131072, rope_scaling=dict(
        factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192,
        rope_type="llama3")),
    "qwen3-yarn": dict(head_dim=128, rope_theta=1000000, max_position_embeddings=40960, rope_scaling=dict(
        rope_type="yarn", factor=4.0, original_max_position_embeddings=32768)),
    "phi3-longrope": dict(head_dim=96, rope_theta=10000.0, max_position_embeddings=131072,
                          original_max_position_embeddings=4096,
                          rope_scaling=dict(type="longrope", long_factor=PHI3_LONG, short_factor=PHI3_SHORT)),
    "deepseek-v3": dict(head_dim=64, rope_theta=10000, max_position_embeddings=163840, rope_scaling=dict(
        beta_fast=32, beta_slow=1, factor=40, mscale=1.0, mscale_all_dim=1.0,
        original_max_position_embeddings=4096, type="yarn")),
    "gpt-oss": dict(head_dim=64, rope_theta=150000, max_position_embeddings=131072, rope_scaling=dict(
        beta_fast=32.0, beta_slow=1.0, factor=32.0, original_max_position_embeddings=4096, rope_type="yarn",
        truncate=False)),
    "v5-rope-parameters": dict(head_dim=128, max_position_embeddings=65536, rope_parameters=dict(
        rope_type="yarn", rope_theta=500000.0, factor=8.0, original_max_position_embeddings=8192)),
    "dynamic": dict(head_dim=128, rope_theta=10000.0, max_position_embeddings=4096,
                    rope_scaling=dict(type="dynamic", factor=2.0)),
    "none": dict(head_dim=128, rope_theta=10000.0, max_position_embeddings=4096, rope_scaling=None),
}


def write(tmp_path, hf: dict, name="config.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(hf))
    return str(path)


def transformers_rope(hf: dict, seq_len: int):
    config = LlamaConfig(hidden_size=hf["head_dim"] * 4, num_attention_heads=4, **json.loads(json.dumps(hf)))
    rope_type = config.rope_parameters["rope_type"]
    if rope_type == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)


@pytest.mark.parametrize("seq_len", [2048, 131072])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_json_gives_transformers_rope(tmp_path, name, seq_len):
    hf = CONFIGS[name]
    cfg = RopeScaling(hf_config=write(tmp_path, hf))
    inv_freq, attention_factor = rope_frequencies(cfg, hf["head_dim"], theta=1.0e9, seq_len=seq_len)
    hf_inv_freq, hf_attention_factor = transformers_rope(hf, seq_len)
    assert torch.equal(inv_freq, hf_inv_freq)
    assert attention_factor == pytest.approx(hf_attention_factor, rel=1e-12)


def test_what_the_files_resolve_to(tmp_path):
    phi3 = RopeScaling(hf_config=write(tmp_path, CONFIGS["phi3-longrope"]))
    assert (phi3.rope_type, phi3.original_max_position_embeddings, phi3.factor, phi3.theta) == (
        "longrope", 4096, 32.0, 10000.0)
    dsv3 = RopeScaling(hf_config=write(tmp_path, CONFIGS["deepseek-v3"]))
    assert (dsv3.rope_type, dsv3.factor, dsv3.mscale_all_dim) == ("yarn", 40, 1.0)
    dyn = RopeScaling(hf_config=write(tmp_path, CONFIGS["dynamic"]))
    assert (dyn.rope_type, dyn.original_max_position_embeddings) == ("dynamic", 4096)
    assert RopeScaling(hf_config=write(tmp_path, CONFIGS["none"])).rope_type == "default"


def test_section_keys_override_the_file_and_are_reported(tmp_path):
    path = write(tmp_path, CONFIGS["qwen3-yarn"])
    cfg = RopeScaling(hf_config=path, factor=8.0)
    assert cfg.factor == 8.0 and cfg.original_max_position_embeddings == 32768
    assert cfg.hf_overrides == ["factor=8.0 overrides 4.0"]
    assert RopeScaling(hf_config=path, factor=4.0).hf_overrides == []  # same value: no override


@pytest.mark.parametrize(
    "hf, section, message",
    [
        (CONFIGS["qwen3-yarn"], dict(rope_type="linear"), "rope_type = 'linear' contradicts .* 'yarn'"),
        (CONFIGS["qwen3-yarn"], dict(low_freq_factor=1.0), "rope_scaling.low_freq_factor = 1.0 does not apply"),
        (dict(rope_theta=1e4, rope_scaling=dict(type="yarn", factor=2.0), rope_parameters=dict(type="linear")),
         {}, "rope_scaling .* and rope_parameters .* disagree"),
        (dict(rope_theta=1e4, rope_parameters=dict(rope_type="default", rope_theta=5e5)), {},
         "rope_theta is given twice .* 500000.0 and 10000.0"),
        (dict(rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=1e4),
              rope_scaling=dict(rope_type="linear", factor=2.0, rope_theta=5e5)), {},
         "rope_theta is given twice .* 500000.0 and 10000.0"),
        (dict(rope_theta=1e4, partial_rotary_factor=0.5), {}, "partial_rotary_factor = 0.5 is not supported"),
        (dict(rope_scaling=dict(type="yarn", factor=2.0, original_max_position_embeddings=64, foo=1)), {},
         "rope key 'foo' .*not supported"),
        (dict(rope_parameters=dict(full_attention=dict(rope_type="default"), sliding_attention=dict(
            rope_type="default"))), {}, "per-layer-type rope parameters"),
        (dict(max_position_embeddings=4096, rope_scaling=dict(type="dynamic", factor=2.0,
                                                              original_max_position_embeddings=2048)), {},
         "dynamic's trained length .* 4096 and 2048"),
    ],
    ids=["type-contradiction", "foreign-key", "two-dicts", "two-thetas", "two-thetas-in-dicts", "partial-rotary",
         "unknown-key", "per-layer", "dynamic-two-lengths"],
)
def test_conflicts_are_errors(tmp_path, hf, section, message):
    with pytest.raises(ValueError, match=message):
        RopeScaling(hf_config=write(tmp_path, hf), **section)


def test_both_dict_forms_as_exports_write_them(tmp_path):
    # rope_parameters (transformers 5) and rope_scaling without rope_theta (4.x) plus a top-level rope_theta
    hf = dict(rope_theta=2e4, rope_parameters=dict(rope_type="linear", factor=2.0, rope_theta=2e4),
              rope_scaling=dict(rope_type="linear", factor=2.0))
    cfg = RopeScaling(hf_config=write(tmp_path, hf))
    assert (cfg.rope_type, cfg.factor, cfg.theta) == ("linear", 2.0, 2e4)


def test_yarn_without_factor_is_refused_like_transformers(tmp_path):
    hf = dict(max_position_embeddings=65536, rope_parameters=dict(rope_type="yarn", rope_theta=5e5,
                                                                  original_max_position_embeddings=8192))
    with pytest.raises(ValueError, match="rope_scaling.factor is required for rope_type 'yarn'"):
        RopeScaling(hf_config=write(tmp_path, hf))
    with pytest.raises(KeyError, match="factor"):
        transformers_rope(dict(hf, head_dim=128), 8192)


def test_bad_paths_and_sources(tmp_path):
    with pytest.raises(ValueError, match=r"rope_scaling.hf_config: no such file '.*nope.json'"):
        RopeScaling(hf_config=str(tmp_path / "nope.json"))
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="is not valid JSON"):
        RopeScaling(hf_config=str(tmp_path / "bad.json"))
    with pytest.raises(ValueError, match="set one"):
        RopeScaling(hf_config=str(tmp_path / "bad.json"), from_hf_assets=True)


def test_from_hf_assets_resolves_against_the_assets_folder(tmp_path):
    write(tmp_path, CONFIGS["llama3.1-8b"])
    pending = RopeScaling(from_hf_assets=True)
    assert pending.rope_type is None
    with pytest.raises(ValueError, match="not resolved yet"):
        rope_frequencies(pending, 128, 5e5, 8192)
    with pytest.raises(ValueError, match="needs model.hf_assets_path, got None"):
        pending.resolve_hf_assets(None)
    resolved = pending.resolve_hf_assets(str(tmp_path))
    assert resolved.rope_type == "llama3" and resolved.factor == 8.0 and resolved.theta == 500000.0
    assert resolved.hf_config == str(tmp_path / "config.json") and not resolved.from_hf_assets


def test_rope_keys_from_hf_is_plain_data():
    keys = rope_keys_from_hf(CONFIGS["gpt-oss"])
    assert keys == dict(rope_type="yarn", theta=150000, beta_fast=32.0, beta_slow=1.0, factor=32.0,
                        original_max_position_embeddings=4096, truncate=False)


# ---- rope_theta missing (Llama-1/2-era files) ------------------------------------------------------------

@pytest.mark.parametrize("model_type", sorted(TRANSFORMERS_DEFAULT_THETA))
def test_default_theta_table_is_transformers_own(model_type):
    assert AutoConfig.for_model(model_type).rope_parameters["rope_theta"] == TRANSFORMERS_DEFAULT_THETA[model_type]


LLAMA2 = dict(model_type="llama", hidden_size=512, num_attention_heads=4, max_position_embeddings=4096,
              rope_scaling=None)  # no rope_theta anywhere, as Llama-2's config.json


def test_missing_theta_is_transformers_default_not_the_flavors(tmp_path):
    path = write(tmp_path, LLAMA2)
    cfg = RopeScaling(hf_config=path)
    assert cfg.theta == 10000.0
    assert cfg.theta_source == f"transformers' default for model_type 'llama': {path} has no rope_theta"
    # flavor theta 500000 (torchtitan's llama3 flavors) must not leak in
    inv_freq, _ = rope_frequencies(cfg, 128, theta=500000.0, seq_len=4096)
    hf_inv_freq, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(LlamaConfig.from_dict(LLAMA2))
    assert torch.equal(inv_freq, hf_inv_freq)


def test_theta_sources(tmp_path):
    assert RopeScaling(hf_config=write(tmp_path, CONFIGS["none"])).theta_source.startswith("rope_theta of ")
    assert RopeScaling(rope_type="linear", factor=2.0).theta_source is None  # the model's own
    assert RopeScaling(theta=5e5).theta_source == "[rope_scaling] theta"
    over = RopeScaling(hf_config=write(tmp_path, LLAMA2), theta=5e5)
    assert over.theta_source == "[rope_scaling] theta" and over.hf_overrides == ["theta=500000.0 overrides 10000.0"]


def test_missing_theta_of_an_unknown_model_type_is_an_error(tmp_path):
    path = write(tmp_path, dict(LLAMA2, model_type="my_llama"))
    with pytest.raises(ValueError, match=r"has no rope_theta and transformers' default for its model_type "
                                         r"'my_llama' is not known here .* set rope_scaling.theta"):
        RopeScaling(hf_config=path)
    assert RopeScaling(hf_config=path, theta=10000.0).theta == 10000.0


# ---- extending a plain-RoPE base model: from_hf_assets plus rope_type ------------------------------------

@pytest.mark.parametrize("rope_type, section", [
    ("yarn", dict(factor=4.0)),
    ("llama3", dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0)),
    ("dynamic", dict(factor=4.0)),
    ("linear", dict(factor=4.0)),
])
def test_a_method_can_extend_a_plain_rope_file(tmp_path, rope_type, section):
    base = dict(LLAMA2, rope_theta=20000.0, max_position_embeddings=64)
    cfg = RopeScaling(hf_config=write(tmp_path, base), rope_type=rope_type, **section)
    assert cfg.theta == 20000.0 and cfg.hf_overrides == [f"rope_type={rope_type!r} overrides 'default'"]
    if rope_type != "linear":  # the file's length is the original one, as transformers fills it
        assert cfg.original_max_position_embeddings == 64
    # transformers reading the base file with that rope dict added computes the same RoPE
    extended = LlamaConfig.from_dict(dict(base, rope_scaling=dict(rope_type=rope_type, **section)))
    seq_len = 256
    inv_freq, attention_factor = rope_frequencies(cfg, 128, theta=5e5, seq_len=seq_len)
    hf_inv_freq, hf_attention_factor = ROPE_INIT_FUNCTIONS[rope_type](extended, "cpu", seq_len=seq_len)
    assert torch.equal(inv_freq, hf_inv_freq) and attention_factor == hf_attention_factor


def test_only_a_plain_rope_file_can_be_extended(tmp_path):
    with pytest.raises(ValueError, match="rope_type = 'linear' contradicts .* 'llama3'"):
        RopeScaling(hf_config=write(tmp_path, CONFIGS["llama3.1-8b"]), rope_type="linear", factor=2.0)


def test_from_hf_assets_with_a_rope_type_waits_for_the_file(tmp_path):
    # at parse time the original length is not known yet: it comes from the file when the job is checked
    pending = RopeScaling(from_hf_assets=True, rope_type="yarn", factor=4.0)
    with pytest.raises(ValueError, match="rope_scaling.beta_fast = 32.0 does not apply to rope_type 'linear'"):
        RopeScaling(from_hf_assets=True, rope_type="linear", factor=4.0, beta_fast=32.0)  # still checked early
    write(tmp_path, dict(LLAMA2, max_position_embeddings=64))
    resolved = pending.resolve_hf_assets(str(tmp_path))
    assert (resolved.original_max_position_embeddings, resolved.theta) == (64, 10000.0)
    no_length = tmp_path / "no_length"
    no_length.mkdir()
    write(no_length, dict(model_type="llama"))  # no max_position_embeddings: nothing to take the length from
    with pytest.raises(ValueError, match="original_max_position_embeddings is required for rope_type 'yarn'"):
        pending.resolve_hf_assets(str(no_length))


LLAMA4_TEXT = dict(model_type="llama4_text", head_dim=128, max_position_embeddings=262144, rope_theta=500000.0,
                   rope_scaling=dict(rope_type="llama3", factor=16.0, low_freq_factor=1.0, high_freq_factor=1.0,
                                     original_max_position_embeddings=8192))


def test_multimodal_files_are_read_from_their_text_config(tmp_path):
    # Llama 4 / Kimi / Muse Glimmer keep the language model's RoPE in text_config: the top level has none
    wrapped = dict(model_type="llama4", architectures=["Llama4ForConditionalGeneration"], text_config=LLAMA4_TEXT,
                   vision_config=dict(rope_theta=10000.0, model_type="llama4_vision_model"))
    assert rope_keys_from_hf(wrapped) == rope_keys_from_hf(LLAMA4_TEXT)
    assert rope_keys_from_hf(wrapped)["rope_type"] == "llama3" and rope_keys_from_hf(wrapped)["theta"] == 500000.0
    cfg = RopeScaling(hf_config=write(tmp_path, wrapped))
    inv_freq, _ = rope_frequencies(cfg, 128, theta=1.0e9, seq_len=131072)
    expected, _ = transformers_rope(dict(LLAMA4_TEXT, model_type="llama"), 131072)
    assert torch.equal(inv_freq, expected)


def test_text_config_contradicting_the_top_level_is_an_error():
    with pytest.raises(ValueError, match=r"rope_theta is 10000.0 at the top level and 500000.0 in text_config"):
        rope_keys_from_hf(dict(rope_theta=10000.0, text_config=LLAMA4_TEXT))
