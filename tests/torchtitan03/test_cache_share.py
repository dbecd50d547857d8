"""One RoPE cache per model on torchtitan 0.3 (``titan_rope_ext/torchtitan03/cache_share.py``): every layer's RoPE
buffer is one storage after 0.3's own init path, with the formula's values; per model (two models never share),
per pipeline stage; through casts, ``buffer_device``, activation checkpointing, ``torch.compile`` and FSDP2 on a
1-rank gloo group; freed with the model; never in a state dict. The 2-rank runs (FSDP2, TP, PP) are in
``test_training.py``."""

from __future__ import annotations

import gc
import json
import socket
import weakref

import pytest
import torch
import torch.nn.functional as F
from torchtitan.models.common.rope import RoPE

from tests.torchtitan03.helpers import build, model_config, section, with_sdpa
from titan_rope_ext import rope_frequencies
from titan_rope_ext.cache import complex_cache, cos_sin_cache
from titan_rope_ext.torchtitan03.cache_share import rope_cache_report
from titan_rope_ext.torchtitan03.models import attentions, scale_model

HEAD_DIM = {"llama3": 16, "qwen3": 128}
LAYOUT = {"llama3": complex_cache, "qwen3": cos_sin_cache}
SEQ = 256


def converted(model: str, n_layers: int | None = None, sdpa: bool = False):
    config = model_config(model, n_layers=n_layers)
    if sdpa:
        config = with_sdpa(config)
    scale_model(config, section("yarn", HEAD_DIM[model]), max_seq_len=SEQ)
    return config


def caches(model) -> list[torch.Tensor]:
    return [m.cache for m in model.modules() if isinstance(m, RoPE)]


def storages(model) -> set[int]:
    return {c.untyped_storage().data_ptr() for c in caches(model)}


def formula(model: str) -> torch.Tensor:
    theta = model_config(model).layers[0].attention.rope.theta
    inv_freq, attention_factor = rope_frequencies(section("yarn", HEAD_DIM[model]), HEAD_DIM[model], theta, SEQ)
    return LAYOUT[model](inv_freq, attention_factor, SEQ)


@pytest.mark.parametrize("model", ["llama3", "qwen3"])
def test_after_0_3_init_every_layer_holds_one_storage_with_the_formula_bits(model):
    config = converted(model)
    n_layers = len(attentions(config))
    built = build(config)  # meta, to_empty, init_states: the Trainer's path
    found = caches(built)
    assert len(found) == n_layers > 1
    assert len(storages(built)) == 1 and all(c is found[0] for c in found)  # one tensor object: FSDP2 dedups it
    assert found[0].device.type == "cpu" and torch.equal(found[0], formula(model))  # bitwise
    assert torch.equal(config.layers[0].attention.rope.build().cache, found[0])  # an eager build of one layer
    assert not any("rope" in key or "cache" in key for key in built.state_dict())

    report = rope_cache_report(built)
    per_layer = formula(model).numel() * formula(model).element_size()
    assert report["unique_storages"] == 1 and report["rope_modules"] == n_layers
    assert report["bytes"] == per_layer and report["stock_bytes"] == n_layers * per_layer

    # stock 0.3, for comparison: one storage per layer
    assert len(storages(build(model_config(model)))) == n_layers


def test_to_empty_allocates_one_cache_not_one_per_layer():
    with torch.device("meta"):
        model = converted("qwen3").build()
    assert len({c.untyped_storage()._cdata for c in caches(model)}) == 1  # built on meta: one tensor already
    model.to_empty(device="cpu")  # nn.Module._apply alone would give each layer its own empty cache
    assert len(storages(model)) == 1 and all(c is caches(model)[0] for c in caches(model))


def test_two_models_never_share():
    config = converted("llama3")
    first, second = build(config), build(config)
    other = build(converted("llama3"))
    with torch.device("meta"):  # two builds before either is materialized: still two models
        third, fourth = config.build(), config.build()
    for m in (third, fourth):
        m.to_empty(device="cpu")
        m.init_states(buffer_device=None)
    eager = config.layers[0].attention.rope.build()
    models = [first, second, other, third, fourth]
    assert all(len(storages(m)) == 1 for m in models)
    assert len(set().union(*map(storages, models)) | {eager.cache.untyped_storage().data_ptr()}) == 6


def test_init_states_again_rebuilds_once():
    built = build(converted("qwen3"))
    before = caches(built)[0]
    with torch.no_grad():
        built.init_states(buffer_device=None)
    after = caches(built)
    assert len(storages(built)) == 1 and after[0] is not before and torch.equal(after[0], before)


@pytest.mark.parametrize("model", ["llama3", "qwen3"])
def test_dtype_casts_keep_one_storage_and_the_cache_dtype(model):
    # apply_rotary_emb computes in float32 whatever q and k are; model.to(bfloat16) would turn stock's complex64
    # cache into its real part and its float32 cache into bfloat16
    built = build(converted(model))
    expected = formula(model)
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double(),
                 lambda m: m.float(), lambda m: m.to("cpu")):
        cast(built)
        assert len(storages(built)) == 1 and all(c is caches(built)[0] for c in caches(built))
        assert caches(built)[0].dtype == expected.dtype and torch.equal(caches(built)[0], expected)
    assert built.layers["0"].attention.wo.weight.dtype == torch.float32  # the last cast reached the parameters
    built.to(torch.bfloat16)
    assert built.layers["0"].attention.wo.weight.dtype == torch.bfloat16

    stock = build(model_config(model))
    with pytest.warns(UserWarning) if model == "llama3" else _no_warning():  # complex -> real drops the imaginary part
        stock.to(torch.bfloat16)
    assert caches(stock)[0].dtype == torch.bfloat16 and len(storages(stock)) == len(caches(stock))


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_init_with_a_buffer_device_other_than_the_parameters():
    # 0.3's Trainer with CPU offload: to_empty(cpu), init_weights(buffer_device=cuda); here parameters on meta,
    # caches on the CPU, and the other way round
    config = converted("llama3")
    with torch.device("meta"):
        model = config.build()
    model.to_empty(device="meta")
    model.init_weights(buffer_device=torch.device("cpu"))
    assert next(model.parameters()).device.type == "meta"
    assert len(storages(model)) == 1 and torch.equal(caches(model)[0], formula("llama3"))

    with torch.device("meta"):
        model = config.build()
    model.to_empty(device="cpu")
    model.init_weights(buffer_device=torch.device("meta"))
    assert next(model.parameters()).device.type == "cpu" and caches(model)[0].device.type == "meta"
    assert rope_cache_report(model)["unique_storages"] == 1  # meta storages told apart by their storage objects


def test_each_pipeline_stage_gets_its_own_cache():
    # torchtitan's own split (pipeline_parallel._split_module): a deepcopy of the meta model per stage
    from torchtitan.distributed.pipeline_parallel import _split_module

    with torch.device("meta"):
        whole = converted("llama3").build()
    stages = [_split_module(whole, ["tok_embeddings", "layers.0", "layers.1", "layers.2"]),
              _split_module(whole, ["layers.3", "layers.4", "layers.5", "norm", "lm_head"])]
    for stage in stages:
        stage.to_empty(device="cpu")
        stage.init_weights(buffer_device=None)
    assert [len(caches(s)) for s in stages] == [3, 3]
    assert [len(storages(s)) for s in stages] == [1, 1] and storages(stages[0]) != storages(stages[1])
    assert all(torch.equal(caches(s)[0], formula("llama3")) for s in stages)


def test_the_cache_goes_with_the_model():
    config = converted("qwen3")
    model = build(config)
    cache, owner = weakref.ref(caches(model)[0]), weakref.ref(model.layers["0"].attention.rope._cache_owner)
    del model
    gc.collect()
    assert cache() is None and owner() is None  # the config, still alive, holds no tensor
    assert len(storages(build(config))) == 1


def test_the_config_serializes_as_torchtitan_logs_it(recwarn):
    config = converted("llama3")
    text = json.dumps(config.to_dict())  # Trainer.Config.to_dict (debug.print_config, save_config_file)
    assert text.count('"cache_sharing": {"one_cache_per_model": true}') == len(attentions(config))
    assert not [w for w in recwarn if "JSON serializable" in str(w.message)]


def test_the_override_path_shares_too():
    from titan_rope_ext.torchtitan03.override import rope_scaling

    def overridden():
        config = model_config("llama3")
        for _, layer, attention in attentions(config):
            layer.attention = rope_scaling(attention, rope_type="yarn", factor=4.0,
                                           original_max_position_embeddings=64)
        return config

    first, second = build(overridden()), build(overridden())
    assert len(storages(first)) == 1 and len(storages(second)) == 1 and storages(first) != storages(second)


def _loss_and_grads(model, tokens):
    logits = model(tokens)
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens.roll(-1, 1).flatten())
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        grads[name.replace("_checkpoint_wrapped_module.", "").replace("_orig_mod.", "")] = grad
    return loss.detach(), grads


@pytest.fixture
def one_rank_gloo():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,), mesh_dim_names=("fsdp",))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("model", ["llama3", "qwen3"])
def test_ac_compile_and_fsdp2_as_parallelize_applies_them(model, one_rank_gloo):
    # The order of 0.3's parallelize_llama / parallelize_qwen3 (AC, per-block torch.compile(fullgraph=True), FSDP2)
    # on the meta model, then to_empty and init_weights: one cache, and the same loss and gradients as the plain
    # eager model. torch.compile with aot_eager (dynamo's full-graph capture and AOT autograd; no C++ on CPU).
    from torchtitan.config import CompileConfig
    from torchtitan.distributed.activation_checkpoint import FullAC
    from torchtitan.distributed.compile import apply_compile
    from torchtitan.distributed.fsdp import apply_fsdp_to_decoder
    from torchtitan.distributed.parallel_dims import ParallelDims

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    config = converted(model, n_layers=2, sdpa=True)
    reference = build(config)
    with torch.device("meta"):
        wrapped = config.build()
    FullAC.Config().build().apply(wrapped)
    apply_compile(wrapped, compile_config=CompileConfig(enable=True, backend="aot_eager"),
                  parallel_dims=ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, world_size=1))
    apply_fsdp_to_decoder(wrapped, one_rank_gloo, param_dtype=torch.float32, reduce_dtype=torch.float32,
                          pp_enabled=False)
    wrapped.to_empty(device="cpu")
    with torch.no_grad():
        wrapped.init_weights(buffer_device=None)
    assert len(caches(wrapped)) == 2 and len(storages(wrapped)) == 1
    assert torch.equal(caches(wrapped)[0], formula(model))
    with torch.no_grad():
        for (name, p), (ref_name, q) in zip(wrapped.named_parameters(), reference.named_parameters(), strict=True):
            assert name.replace("_checkpoint_wrapped_module.", "") == ref_name
            (p.to_local() if hasattr(p, "to_local") else p).copy_(q)

    tokens = torch.randint(0, config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))
    loss, grads = _loss_and_grads(wrapped, tokens)
    expected_loss, expected_grads = _loss_and_grads(reference, tokens)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == expected_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], expected_grads[name], rtol=1e-4, atol=1e-6)
    assert len(storages(wrapped)) == 1  # forward, AC recompute and backward left it alone
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # the blocks ran compiled
