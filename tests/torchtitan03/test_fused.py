"""``rope_scaling.apply = "fused"`` on torchtitan 0.3, on CPU: our RoPE modules' ``forward`` with the fused op
against stock's ``forward`` (``_reshape_cache`` + ``apply_rotary_emb``) on every supported model's calls,
attention blocks forward and backward, fullgraph compile, activation checkpointing, DTensor q/k, the three
ways in, and the Triton kernel behind the module in Triton's CPU interpreter.

On CPU the op runs its float32 torch implementation; tests that need the fused path add "cpu" to
``FUSED_DEVICES`` (the ``fused_on_cpu`` fixture). CUDA: tests/torchtitan03/test_fused_gpu.py.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchtitan.models.common.rope import RoPE

from tests.oplog import OpLog
from tests.torchtitan03.helpers import build, with_sdpa
from titan_rope_ext import RopeScaling
from titan_rope_ext.torchtitan03 import fused
from titan_rope_ext.torchtitan03.models import scale_model
from titan_rope_ext.torchtitan03.rope import _OneCachePerModel, ScaledComplexRoPE, ScaledCosSinRoPE

YARN = dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=32)
ROWS = 64  # cache rows (max_seq_len)
SEQ = 16
OP = "titan_rope.rotary.default"

# model -> (torchtitan.models module, flavor): every 0.3 model whose RoPE is ours
MODELS = {"llama3": ("llama3", "debugmodel"), "qwen3": ("qwen3", "debugmodel"),
          "deepseek_v3": ("deepseek_v3", "debugmodel"), "kimi_k2_5": ("kimi_k2_7", "debugmodel"),
          "gpt_oss": ("gpt_oss", "debugmodel"), "muse_glimmer": ("muse_glimmer", "debugmodel")}
MLA = ("deepseek_v3", "kimi_k2_5")

# positions as the Trainer passes them: none; (1, seq) rows of a CP shard (headtail: first and last
# chunks of a 64-token sequence); (batch, seq) per-document positions (document masking restarts them)
POSITIONS = {
    "none": None,
    "cp_shard": torch.cat([torch.arange(8), torch.arange(56, 64)])[None],
    "documents": torch.stack([torch.cat([torch.arange(10), torch.arange(6)]),
                              torch.cat([torch.arange(3), torch.arange(13)])]),
}


@pytest.fixture
def fused_on_cpu(monkeypatch):
    monkeypatch.setattr(fused, "FUSED_DEVICES", fused.FUSED_DEVICES + ("cpu",))


def converted(model: str, apply: str, n_layers: int = 1, sdpa: bool = False):
    module, flavor = MODELS[model]
    config = importlib.import_module(f"torchtitan.models.{module}").model_registry(flavor).model
    config.layers = config.layers[:n_layers]
    if sdpa:
        config = with_sdpa(config)
    scale_model(config, RopeScaling(**YARN, apply=apply), max_seq_len=ROWS, model_name=model)
    return config


def rope_module(model: str, apply: str = "fused"):
    return converted(model, apply).layers[0].attention.rope.build()


def calls(model: str, rope, dtype=torch.float32):
    """``(query, key)`` in the form this model's attention passes them to its RoPE module."""
    g = torch.Generator().manual_seed(0)
    d = rope.config.dim
    if model in MLA:  # q_pe: a strided slice of q; k_pe: a slice of wkv_a's output, one head
        q = torch.randn(2, SEQ, 3, 32 + d, generator=g, dtype=dtype)[..., 32:]
        k = torch.split(torch.randn(2, SEQ, 24 + d, generator=g, dtype=dtype), [24, d], dim=-1)[1].unsqueeze(2)
        return q, k
    return torch.randn(2, SEQ, 4, d, generator=g, dtype=dtype), torch.randn(2, SEQ, 2, d, generator=g, dtype=dtype)


def stock_forward(rope, query, key, positions):
    """Stock 0.3's ``RoPE.forward``: ``_reshape_cache`` then the module's ``apply_rotary_emb``."""
    return RoPE.forward(rope, query, key, positions)


def test_the_fused_forward_is_in_both_of_our_rope_modules():
    assert rope_module("llama3").__class__ is ScaledComplexRoPE and rope_module("qwen3").__class__ is ScaledCosSinRoPE
    for cls in (ScaledComplexRoPE, ScaledCosSinRoPE):  # one forward for both layouts, stock's apply_rotary_emb
        assert cls.forward is _OneCachePerModel.forward and "apply_rotary_emb" not in vars(cls)


@pytest.mark.parametrize("positions", list(POSITIONS))
@pytest.mark.parametrize("model", list(MODELS))
def test_fused_forward_equals_stock_on_each_models_calls(model, positions, fused_on_cpu):
    rope = rope_module(model)
    assert rope.config.rope_scaling.apply == "fused" and rope.cache.shape[0] == ROWS
    pos = POSITIONS[positions]
    for dtype in (torch.float32, torch.bfloat16):
        q, k = calls(model, rope, dtype)
        with OpLog() as log:
            got = rope(q, k, pos)
        assert OP in log.names
        with OpLog() as log:
            want = stock_forward(rope, q, k, pos)
        assert OP not in log.names
        for g, w in zip(got, want):
            assert g.dtype == w.dtype == dtype and g.shape == w.shape
            if dtype == torch.float32:  # both float32 arithmetic (stock's complex product, our real formula)
                torch.testing.assert_close(g, w, rtol=2e-6, atol=2e-6)
            else:  # both round a float32 result once: at most one bf16 ulp (2**-7 relative) apart
                assert ((g.float() - w.float()).abs() <= 2.0**-7 * w.float().abs()).all()


def test_cpu_tensors_take_stocks_forward_by_default():
    for model in ("llama3", "qwen3"):
        rope = rope_module(model)
        q, k = calls(model, rope)
        with OpLog() as log:
            got = rope(q, k, POSITIONS["documents"])
        assert OP not in log.names
        for g, w in zip(got, stock_forward(rope, q, k, POSITIONS["documents"])):
            assert torch.equal(g, w)


def test_apply_torchtitan_never_takes_the_op(fused_on_cpu):
    rope = rope_module("qwen3", apply="torchtitan")
    q, k = calls("qwen3", rope)
    with OpLog() as log:
        got = rope(q, k, None)
    assert OP not in log.names and all(torch.equal(g, w) for g, w in zip(got, stock_forward(rope, q, k, None)))


def test_gradients_of_the_fused_forward(fused_on_cpu):
    # float64 q and k (the op's torch implementation computes in float64 for them): gradcheck, and
    # the gradient equals stock's (a rotation's transpose: the opposite angle, times the factor)
    for model in ("llama3", "qwen3", "deepseek_v3"):
        rope = rope_module(model)
        q, k = (x.double().requires_grad_() for x in calls(model, rope))
        pos = POSITIONS["documents"]
        small = tuple(x[:1, :4].detach().clone().requires_grad_() for x in (q, k))  # (a dense Jacobian)
        assert torch.autograd.gradcheck(lambda a, b: rope(a, b, pos[:1, :4]), small)
        up = torch.randn_like(q), torch.randn_like(k)
        ours = torch.autograd.grad(rope(q, k, pos), (q, k), up)
        stock = torch.autograd.grad(stock_forward(rope, q, k, pos), (q, k), up)
        for a, b in zip(ours, stock):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("positions", ["none", "documents"])
@pytest.mark.parametrize("model", ["llama3", "qwen3", "deepseek_v3", "muse_glimmer"])
def test_attention_block_forward_and_backward_equal_stocks_apply(model, positions, fused_on_cpu):
    pos = POSITIONS[positions]
    results = {}
    for apply in ("torchtitan", "fused"):
        config = converted(model, apply, sdpa=True)
        attention = build(config, seed=1).layers["0"].attention
        x = torch.randn(2, SEQ, config.dim, generator=torch.Generator().manual_seed(2), requires_grad=True)
        with OpLog() as log:
            out = attention(x, None, pos)
            out.square().sum().backward()
        assert (log.names.count(OP) == 2) == (apply == "fused")  # forward, and the backward's rotation
        assert (OP in log.names) == (apply == "fused")
        results[apply] = (out, x.grad, {n: p.grad for n, p in attention.named_parameters()})
    (out_t, dx_t, grads_t), (out_f, dx_f, grads_f) = results["torchtitan"], results["fused"]
    torch.testing.assert_close(out_f, out_t, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dx_f, dx_t, rtol=1e-5, atol=1e-6)
    assert grads_t.keys() == grads_f.keys() and grads_t
    for name in grads_t:
        torch.testing.assert_close(grads_f[name], grads_t[name], rtol=1e-4, atol=1e-6)


class GraphLog:
    """A torch.compile backend that records the calls in each graph Dynamo captures and runs it eagerly."""

    def __init__(self):
        self.targets: list[str] = []

    def __call__(self, gm, example_inputs):
        self.targets += [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        return gm.forward


@pytest.mark.parametrize("model", ["llama3", "qwen3"])
def test_fullgraph_compiled_attention_block_traces_the_op(model, fused_on_cpu):
    config = converted(model, "fused", sdpa=True)
    attention = build(config, seed=1).layers["0"].attention
    x = torch.randn(2, SEQ, config.dim, generator=torch.Generator().manual_seed(2))
    pos = POSITIONS["documents"]

    def step(fn):
        xg = x.clone().requires_grad_()
        out = fn(xg, None, pos)
        return out, torch.autograd.grad(out.square().sum(), xg)[0]

    eager = step(attention)
    log = GraphLog()
    traced = step(torch.compile(attention, backend=log, fullgraph=True))
    assert sum("titan_rope.rotary" in t for t in log.targets) == 1, log.targets  # one call for q and k
    assert not any("view_as_complex" in t or "gather" in t for t in log.targets)  # stock's apply and row gather
    compiled = step(torch.compile(attention, fullgraph=True))  # inductor (on CPU: the op's torch body)
    for got in (traced, compiled):
        for a, b in zip(got, eager):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_activation_checkpointing_recomputes_the_op(fused_on_cpu):
    from torch.utils.checkpoint import checkpoint, CheckpointPolicy, create_selective_checkpoint_contexts

    config = converted("llama3", "fused", sdpa=True)
    attention = build(config, seed=1).layers["0"].attention
    x = torch.randn(2, SEQ, config.dim, generator=torch.Generator().manual_seed(2))
    pos = POSITIONS["documents"]

    def step(run):
        attention.zero_grad()
        xg = x.clone().requires_grad_()
        with OpLog() as log:
            out = run(xg)
            out.square().sum().backward()
        return log.names.count(OP), out, xg.grad, attention.wo.weight.grad.clone()

    plain = step(lambda xg: attention(xg, None, pos))
    full = step(lambda xg: checkpoint(attention, xg, None, pos, use_reentrant=False))
    # selective AC (torchtitan's op-level policy runs under a dispatch mode): recompute everything
    policy = functools.partial(create_selective_checkpoint_contexts, lambda ctx, op, *a, **k: CheckpointPolicy.MUST_RECOMPUTE)
    selective = step(lambda xg: checkpoint(attention, xg, None, pos, use_reentrant=False, context_fn=policy))
    assert plain[0] == 2 and full[0] == selective[0] == 3  # forward, recomputed forward, backward
    for got in (full, selective):
        for a, b in zip(got[1:], plain[1:]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_dtensor_q_and_k_rotate_locally_or_take_stocks_forward(fused_on_cpu):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import distribute_tensor, DTensor, Replicate, Shard

    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        for model in ("qwen3", "deepseek_v3"):
            rope = rope_module(model)
            q, k = calls(model, rope)
            want = {p: stock_forward(rope, q, k, POSITIONS[p]) for p in ("none", "documents")}
            rope.cache = distribute_tensor(rope.cache, mesh, [Replicate()])  # as the TP plans replicate it
            # (q, k placements, positions: None / plain / DTensor like q's tokens, takes the op)
            cases = [((Shard(2), Shard(2)), "none", True),
                     ((Shard(2), Replicate()), "documents", True),  # MLA: q_pe over heads, k_pe replicated
                     ((Replicate(), Replicate()), "plain", True),
                     ((Shard(0), Shard(0)), "dtensor", True),
                     ((Shard(1), Shard(1)), "dtensor", True),  # CP: the positions say where each token is
                     ((Shard(1), Shard(1)), "plain", True),  # stock's reading: the local shard's positions
                     ((Shard(1), Shard(1)), "none", False),  # sequence shards without positions: stock
                     ((Shard(0), Shard(1)), "documents", False)]  # q and k split tokens differently: stock
            for (q_p, k_p), given, uses_op in cases:
                dq, dk = distribute_tensor(q, mesh, [q_p]), distribute_tensor(k, mesh, [k_p])
                docs = POSITIONS["documents"]
                pos = DTensor.from_local(docs, mesh, [q_p]) if given == "dtensor" else None if given == "none" else docs
                with OpLog() as log:
                    got = rope(dq, dk, pos)
                assert (OP in log.names) == uses_op, (model, q_p, k_p, given)
                for g, w, placement in zip(got, want["none" if given == "none" else "documents"], (q_p, k_p)):
                    assert isinstance(g, DTensor) and g.shape == w.shape
                    assert g.placements == (placement,) or not uses_op  # (stock's own placements otherwise)
                    torch.testing.assert_close(g.full_tensor(), w, rtol=2e-6, atol=2e-6)
    finally:
        if created:
            dist.destroy_process_group()


def test_spmd_type_checking_gives_the_results_stocks_types(fused_on_cpu):
    """Under ``debug.spmd_typechecking`` (the default spmd_types backend) the op has no sharding rule: it
    runs unchecked and each result gets its input's type, which is the type stock's forward gives."""
    import spmd_types as spmd
    from spmd_types._checker import typecheck
    from spmd_types._testing import fake_pg
    from torch.distributed.device_mesh import init_device_mesh

    with fake_pg(8):
        mesh = init_device_mesh("cpu", (2, 2, 2), mesh_dim_names=("dp", "cp", "tp"))
        for model in ("llama3", "qwen3"):
            types = {}
            for apply in ("torchtitan", "fused"):
                rope = rope_module(model, apply)
                q, k = calls(model, rope)
                pos = POSITIONS["documents"].clone()
                with spmd.set_current_mesh(mesh), typecheck(local=False):
                    axis = spmd.current_mesh_names()
                    tokens = {axis["dp"]: spmd.S(0), axis["cp"]: spmd.S(1)}
                    spmd.assert_type(q, {**tokens, axis["tp"]: spmd.S(2)})  # heads over TP
                    spmd.assert_type(k, {**tokens, axis["tp"]: spmd.R})
                    spmd.assert_type(pos, {**tokens, axis["tp"]: spmd.R})
                    spmd.assert_type(rope.cache, {a: spmd.R for a in axis.values()})
                    with OpLog() as log:
                        out = rope(q, k, pos)
                    assert (OP in log.names) == (apply == "fused")
                    types[apply] = [(dict(spmd.get_local_type(x)), spmd.get_partition_spec(x)) for x in out]
            assert types["fused"] == types["torchtitan"]
            assert types["fused"][0][1] == spmd.PartitionSpec(axis["dp"], axis["cp"], axis["tp"], None)


# --- the three ways in ---

def test_every_way_in_gives_the_fused_rope_with_one_override():
    from torchtitan.config import OverrideConfig, apply_overrides
    from torchtitan.config import ConfigManager

    from titan_rope_ext.torchtitan03.converter import RopeScalingConverter

    section = ConfigManager().parse_args([
        "--module", "titan_rope_ext.torchtitan03.jobs", "--config", "qwen3.qwen3_debugmodel",
        "--rope_scaling.rope_type", "yarn", "--rope_scaling.factor", "4",
        "--rope_scaling.original_max_position_embeddings", "32", "--rope_scaling.apply", "fused"])
    assert section.rope_scaling == RopeScaling(**YARN, apply="fused")
    scale_model(section.model_spec.model, section.resolved_rope_scaling(), max_seq_len=section.training.seq_len)
    config = importlib.import_module("torchtitan.models.llama3.config_registry").llama3_debugmodel()
    config.model_spec.model.update_from_config(config=config)
    lines = apply_overrides(OverrideConfig(imports=[("titan_rope_ext.torchtitan03.override.rope_scaling",
                                                     dict(YARN, apply="fused"))]), config)
    assert len(lines) == 6  # one override, one line per attention node
    converter = RopeScalingConverter.Config(rope_scaling=RopeScaling(**YARN, apply="fused")).build().convert(
        importlib.import_module("torchtitan.models.deepseek_v3").model_registry("debugmodel").model)
    for model_config, cls in ((section.model_spec.model, ScaledCosSinRoPE.Config),
                              (config.model_spec.model, ScaledComplexRoPE.Config), (converter, ScaledComplexRoPE.Config)):
        ropes = [layer.attention.rope for layer in model_config.layers]
        assert ropes and all(type(r) is cls and r.rope_scaling.apply == "fused" for r in ropes)


# --- the Triton kernel behind the module, in Triton's CPU interpreter ---

_INTERPRETED = r"""
import json, sys, torch
from titan_rope_ext.cache import cache_views
from titan_rope_ext.kernels import rotary
from titan_rope_ext.torchtitan03 import fused
from tests.torchtitan03.test_fused import calls, POSITIONS, rope_module
fused.FUSED_DEVICES = ("cuda", "cpu")
launched = []
launch = rotary.launch
rotary.launch = lambda *a, **k: launched.append(1) or launch(*a, **k)
rotary._direct_path = lambda q, k: True  # rotate() launches the kernel itself, as on CUDA in eager
out = []
for model in ("llama3", "qwen3", "deepseek_v3"):
    rope = rope_module(model)
    for name, pos in POSITIONS.items():
        for dtype in (torch.float32, torch.bfloat16):
            q, k = calls(model, rope, dtype)
            got = rope(q, k, pos)
            pairs = model != "qwen3"
            cos, sin = cache_views(rope.cache, rope.config.dim, pairs)  # the exact rotation, in float64
            want = rotary.rotary_reference(q.double(), k.double(), cos.double(), sin.double(), pos, pairs, False)
            for g, w in zip(got, want):
                bound = (1e-6 * w.abs().max()) if dtype == torch.float32 else (2.0**-7 * w.abs() + 1e-6 * w.abs().max())
                out.append([model, name, str(dtype), ((g.double() - w).abs() / bound).max().item()])
json.dump({"launched": len(launched), "cases": out}, sys.stdout)
"""


def test_triton_kernel_behind_the_module_in_the_cpu_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[2]), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", _INTERPRETED], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["launched"] == 3 * 3 * 2 and len(result["cases"]) == 3 * 3 * 2 * 2
    for *case, err in result["cases"]:
        assert err <= 1.0, case  # float32: 1e-6 of the scale; bf16: one bf16 ulp (the interpreter truncates)
