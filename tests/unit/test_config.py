"""The [rope_scaling] section: every bad value is a ValueError naming the key and the value."""

import pytest

from titan_rope_ext import RopeScaling

YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64)
LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=8192)
LONGROPE = dict(rope_type="longrope", short_factor=[1.0] * 8, long_factor=[2.0] * 8,
                original_max_position_embeddings=64, factor=4.0)


@pytest.mark.parametrize(
    "section, fragments",
    [
        (dict(rope_type="yarnn"), ["rope_scaling.rope_type", "'yarnn'", "'default'", "'longrope'"]),
        (dict(rope_type="linear", factor=0.5), ["rope_scaling.factor", ">= 1.0", "0.5"]),
        (dict(rope_type="linear", factor=0.0), ["rope_scaling.factor", "0.0"]),
        (dict(rope_type="linear", factor=float("nan")), ["rope_scaling.factor", "nan"]),
        (dict(rope_type="linear"), ["rope_scaling.factor", "required", "'linear'"]),
        (dict(YARN, original_max_position_embeddings=0), ["rope_scaling.original_max_position_embeddings", "0"]),
        (dict(YARN, original_max_position_embeddings=-8), ["original_max_position_embeddings", "-8"]),
        (dict(YARN, original_max_position_embeddings=64.5), ["original_max_position_embeddings", "64.5"]),
        (dict(YARN, beta_fast=1.0, beta_slow=1.0), ["rope_scaling.beta_fast", "beta_slow", "1.0"]),
        (dict(YARN, beta_fast=0.5), ["rope_scaling.beta_fast", "0.5"]),
        (dict(YARN, attention_factor=-1.0), ["rope_scaling.attention_factor", "-1.0"]),
        (dict(YARN, mscale=0.0), ["rope_scaling.mscale", "0.0"]),
        (dict(LLAMA3, low_freq_factor=4.5), ["rope_scaling.high_freq_factor", ">= low_freq_factor (4.5)", "4.0"]),
        (dict(LLAMA3, low_freq_factor=5.0), ["high_freq_factor", "low_freq_factor (5.0)", "4.0"]),
        (dict(LLAMA3, high_freq_factor=None), ["rope_scaling.high_freq_factor", "required"]),
        (dict(LONGROPE, long_factor=[2.0] * 7), ["rope_scaling.long_factor", "8", "7"]),
        (dict(LONGROPE, short_factor=[1.0, -1.0] * 4), ["rope_scaling.short_factor", "-1.0"]),
        (dict(LONGROPE, long_factor=[]), ["rope_scaling.long_factor", "[]"]),
        (dict(LONGROPE, short_factor=None), ["rope_scaling.short_factor", "required"]),
        (dict(LONGROPE, factor=None), ["rope_scaling.factor is required for rope_type 'longrope'", "attention_factor",
                                       "max_position_embeddings / original_max_position_embeddings"]),
        (dict(rope_type="default", theta=0.5), ["rope_scaling.theta", "0.5"]),
        (dict(rope_type="default", factor=4.0), ["rope_scaling.factor", "4.0", "'default'"]),
        (dict(rope_type="linear", factor=4.0, beta_fast=32.0), ["rope_scaling.beta_fast", "32.0", "'linear'"]),
        (dict(LLAMA3, truncate=False), ["rope_scaling.truncate", "False", "'llama3'"]),
        (dict(YARN, low_freq_factor=1.0), ["rope_scaling.low_freq_factor", "'yarn'"]),
        (dict(rope_type="ntk", factor=2.0, original_max_position_embeddings=64),
         ["rope_scaling.original_max_position_embeddings", "64", "'ntk'"]),
        (dict(YARN, truncate="yes"), ["rope_scaling.truncate", "'yes'"]),
        (dict(YARN, arithmetic="torch"), ["rope_scaling.arithmetic", "'torch'", "'deepseek'"]),
        (dict(LLAMA3, arithmetic="deepseek"), ["rope_scaling.arithmetic", "'deepseek'", "'llama3'"]),
    ],
)
def test_bad_values_name_key_and_value(section, fragments):
    with pytest.raises(ValueError) as err:
        RopeScaling(**section)
    for fragment in fragments:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_longrope_needs_factor_or_attention_factor(tmp_path):
    # explicit keys: no silent training.seq_len / original; attention_factor alone is complete
    assert RopeScaling(**dict(LONGROPE, factor=None, attention_factor=1.2)).factor is None
    # a config.json keeps transformers' max_position_embeddings / original
    path = tmp_path / "config.json"
    path.write_text('{"rope_theta": 1e4, "max_position_embeddings": 256, "rope_scaling": {"rope_type": "longrope", '
                    '"short_factor": [1, 1], "long_factor": [2, 2], "original_max_position_embeddings": 64}}')
    assert RopeScaling(hf_config=str(path)).factor == 4.0


def test_longrope_length_is_checked_against_head_dim():
    cfg = RopeScaling(**LONGROPE)
    cfg.check_head_dim(16)
    with pytest.raises(ValueError, match=r"rope_scaling.short_factor must have head_dim // 2 = 64 entries .* got 8"):
        cfg.check_head_dim(128)
    with pytest.raises(ValueError, match="even head_dim, got 15"):
        RopeScaling().check_head_dim(15)


def test_defaults_are_plain_rope_and_valid():
    cfg = RopeScaling()
    assert cfg.rope_type == "default" and cfg.method_kwargs() == {}


def test_from_hf_reads_transformers_dicts():
    llama31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    assert RopeScaling.from_hf(llama31) == RopeScaling(**LLAMA3)
    legacy = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    assert RopeScaling.from_hf(legacy) == RopeScaling(rope_type="yarn", factor=4.0,
                                                      original_max_position_embeddings=32768)
    params = {"rope_type": "default", "rope_theta": 1000000.0}
    assert RopeScaling.from_hf(params).theta == 1000000.0
    assert RopeScaling.from_hf(legacy, factor=8.0).factor == 8.0


def test_from_hf_refuses_what_it_cannot_honour():
    with pytest.raises(ValueError, match="'partial_rotary_factor' .*0.5"):
        RopeScaling.from_hf({"rope_type": "default", "partial_rotary_factor": 0.5})
    with pytest.raises(ValueError, match="'rope_type' twice .*'yarn' and 'linear'"):
        RopeScaling.from_hf({"type": "yarn", "rope_type": "linear", "factor": 2.0})
    with pytest.raises(ValueError, match="rope_scaling.beta_fast"):
        RopeScaling.from_hf({"rope_type": "linear", "factor": 2.0, "beta_fast": 32})


def test_describe_lists_set_keys():
    assert RopeScaling(**YARN, theta=1e6).describe() == (
        "rope_type=yarn theta=1000000.0 factor=4.0 original_max_position_embeddings=64")


@pytest.mark.parametrize("section, seq_len, window", [
    (YARN, 256, 256), (YARN, 257, 256), (LLAMA3, 65536, 65536), (LLAMA3, 131072, 65536),
    (dict(LONGROPE, factor=4.0), 512, 256),
])
def test_seq_len_past_the_scaled_window_is_named(section, seq_len, window):
    cfg = RopeScaling(**section)
    assert cfg.scaled_window() == window
    warning = cfg.extrapolation_warning(seq_len)
    if seq_len <= window:
        assert warning is None
    else:
        original, factor = cfg.original_max_position_embeddings, cfg.factor
        assert warning.startswith(f"training.seq_len = {seq_len} exceeds rope_scaling.original_max_position_embeddings "
                                  f"({original}) x rope_scaling.factor ({factor:g}) = {window}")


@pytest.mark.parametrize("section", [
    dict(rope_type="default"), dict(rope_type="linear", factor=4.0), dict(rope_type="ntk", factor=4.0),
    dict(rope_type="dynamic", factor=4.0, original_max_position_embeddings=64),
    dict({k: v for k, v in LONGROPE.items() if k != "factor"}, attention_factor=1.2),
], ids=["default", "linear", "ntk", "dynamic", "longrope-without-factor"])
def test_methods_without_a_target_window_never_warn(section):
    # default has no window; linear/ntk name no trained length; dynamic rescales to the run's length itself
    assert RopeScaling(**section).extrapolation_warning(10**7) is None
