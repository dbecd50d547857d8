"""``rope_scaling.apply = "fused"`` on torchtitan 0.3 on CUDA (marker ``gpu``; skipped without a CUDA device).

Parallel to tests/torchtitan02/gpu/test_fused_rotary.py (which tests the op itself on CUDA). Tolerance of
the RoPE module: the kernel computes in float32 and rounds once, so a bf16 output is within half a bf16 ulp
of the exact rotation plus float32 slack: ``|fused - exact| <= 2**-8 * |exact| + 1e-6 * max|exact|``
elementwise (exact = float64 on the same bf16 inputs and float32 cache). Model steps compare against
stock's apply, which rounds differently, so they use the 0.2 tests' looser, stated bound.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.nn.attention import SDPBackend
from torchtitan.models.common.attention import ScaledDotProductAttention

from tests.torchtitan03.helpers import build, with_sdpa
from titan_rope_ext import RopeScaling
from titan_rope_ext.cache import cache_views
from titan_rope_ext.kernels import rotary
from titan_rope_ext.torchtitan03.models import scale_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64)
MODULES = {"llama3": "llama3", "qwen3": "qwen3", "deepseek_v3": "deepseek_v3", "gpt_oss": "gpt_oss"}
SEQ = 256


def converted(model: str, apply: str, n_layers: int | None = None):
    config = importlib.import_module(f"torchtitan.models.{MODULES[model]}").model_registry("debugmodel").model
    if n_layers is not None:
        config.layers = config.layers[:n_layers]
    scale_model(config, RopeScaling(**YARN, apply=apply), max_seq_len=SEQ, model_name=model)
    return config


def positions(kind: str):
    if kind == "none":
        return None
    docs = [torch.cat([torch.arange(100), torch.arange(SEQ - 100)]), torch.arange(SEQ).flip(0)]
    return torch.stack(docs).cuda()  # (batch, seq): per-document restarts; any order


def within_rounding(got: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest ratio of the error to the bound above (<= 1 passes)."""
    bound = 2.0**-8 * exact.abs() + 1e-6 * exact.abs().max()
    return ((got.double() - exact).abs() / bound).max().item()


@pytest.fixture
def launches(monkeypatch):
    """Counts the kernel launches ``rotate`` makes itself (eager CUDA calls)."""
    count = []
    launch = rotary.launch
    monkeypatch.setattr(rotary, "launch", lambda *a, **k: count.append(1) or launch(*a, **k))
    return count


@pytest.mark.parametrize("kind", ["none", "documents"])
@pytest.mark.parametrize("model", list(MODULES))
def test_rope_module_rounds_the_exact_rotation_once(model, kind, launches):
    with torch.device("cuda"):
        rope = converted(model, "fused", n_layers=1).layers[0].attention.rope.build()
    d = rope.config.dim
    torch.manual_seed(0)
    if model == "deepseek_v3":  # MLA's call: a strided q_pe slice and a one-head k_pe
        q = torch.randn(2, SEQ, 4, 32 + d, device="cuda", dtype=torch.bfloat16)[..., 32:]
        k = torch.randn(2, SEQ, 1, d, device="cuda", dtype=torch.bfloat16)
    else:
        q = torch.randn(2, SEQ, 8, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(2, SEQ, 2, d, device="cuda", dtype=torch.bfloat16)
    pos = positions(kind)
    got = rope(q, k, pos)
    assert len(launches) == 1  # one launch for q and k
    pairs = model in ("llama3", "deepseek_v3")
    cos, sin = cache_views(rope.cache, d, pairs)
    exact = rotary.rotary_reference(q.double(), k.double(), cos.double(), sin.double(), pos, pairs, False)
    for g, e in zip(got, exact):
        assert g.dtype == torch.bfloat16 and g.shape == e.shape
        assert within_rounding(g, e) <= 1.0
    # the gradient: the rotation by the opposite angle, also rounded once
    qg, kg = q.clone().requires_grad_(), k.clone().requires_grad_()
    up = torch.randn_like(q), torch.randn_like(k)
    grads = torch.autograd.grad(rope(qg, kg, pos), (qg, kg), up)
    exact = rotary.rotary_reference(up[0].double(), up[1].double(), cos.double(), sin.double(), pos, pairs, True)
    for g, e in zip(grads, exact):
        assert within_rounding(g, e) <= 1.0


def build_model(name: str, apply: str, ac: bool, compile_blocks: bool):
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    config = with_sdpa(converted(name, apply))
    model = build(config, device="cuda")
    for module in model.modules():
        if isinstance(module, ScaledDotProductAttention):
            # stock tries cuDNN attention first; its backward fails with torch 2.14.0+cu130 on the lent H200
            # ("cuDNN Frontend error ... CUDNN_STATUS_BAD_PARAM", stock apply too; a segfault with positions)
            module.sdpa_backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    qkv = next(model.layers["0"].attention.qkv_linear.parameters())  # before any wrapper
    for layer_id, block in list(model.layers.named_children()):
        if ac:
            block = checkpoint_wrapper(block, preserve_rng_state=False)
        if compile_blocks:
            block = torch.compile(block, fullgraph=True)
        model.layers.register_module(layer_id, block)
    return model, config, qkv


@pytest.mark.parametrize("name", ["llama3", "qwen3"])
@pytest.mark.parametrize("variant", ["eager", "eager+positions", "compile", "ac+compile"])
def test_model_step_with_fused_apply_matches_stock_apply(name, variant, launches):
    """bf16 autocast forward + backward of the debug model (SDPA): fused vs stock's apply, same weights.
    Bound: loss within 2e-3 relative and the first attention's q/k/v projection gradient within 3% of its
    norm (the two apply paths round differently in bf16; a wrong rotation or a missing backward is far off)."""
    results = {}
    for apply in ("torchtitan", "fused"):
        model, config, qkv = build_model(name, apply, ac="ac" in variant, compile_blocks="compile" in variant)
        tokens = torch.randint(0, config.vocab_size, (2, SEQ), device="cuda",
                               generator=torch.Generator("cuda").manual_seed(1))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens, positions("documents") if "positions" in variant else None)
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens.roll(-1, 1).flatten())
        loss.backward()
        results[apply] = (loss.item(), qkv.grad.float())
        if apply == "fused" and "compile" not in variant:
            assert launches  # eager: the kernel ran (compiled: Inductor runs it, the CPU tests check the trace)
        launches.clear()
    (loss_t, g_t), (loss_f, g_f) = results["torchtitan"], results["fused"]
    assert loss_f == pytest.approx(loss_t, rel=2e-3)
    assert ((g_f - g_t).norm() / g_t.norm()).item() < 0.03
