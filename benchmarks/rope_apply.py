"""Rotary application speed: the fused op against torchtitan's own code and Liger's kernel, one run.

Usage (one GPU; torchtitan 0.2.2 or 0.3.0 importable; liger-kernel and helion optional)::

    python benchmarks/rope_apply.py [--seqs 8192,32768] [--batch 2] [--out FILE.json] [--sweep]
                                    [--cacheless-config best]

For q ``(batch, seq, 32, 128)`` and k ``(batch, seq, 8, 128)`` in bf16 (llama3-8B heads) and each
``--seqs``, times with ``triton.testing.do_bench`` (L2 flushed between runs, median):

* ``copy``: ``dst.copy_(src)`` of as many bytes as q and k together — the bandwidth reference;
* adjacent pairs (llama3's complex ``freqs_cis``): torchtitan 0.2.2 llama3 ``apply_rotary_emb``
  eager and under ``torch.compile(fullgraph=True, dynamic=False)``, and ``titan_rope.rotary`` (pairs);
* rotate-half (qwen3's ``[cos | sin]`` cache): torchtitan 0.2.2 qwen3 ``apply_rotary_emb`` eager
  and compiled, Liger's ``LigerRopeFunction`` (in place, on the ``(batch, heads, seq, dim)`` view it
  expects), and ``titan_rope.rotary`` (halves).

With torchtitan 0.3 the candidates are RoPE modules called as 0.3's attentions call them,
``rope(q, k, positions)`` with the per-document positions 0.3's dataloader gives (``(batch, seq)``,
``--positions batch``, the default; ``none``: no positions): stock ``ComplexRoPE`` (llama3's, Llama
3.1 scaling) eager and compiled; stock ``CosSinRoPE`` (qwen3's) eager and compiled; ours with
``apply = "fused"`` (``ScaledComplexRoPE`` / ``ScaledCosSinRoPE``, YaRN x4: what a converted model
runs); and torchtitan's own Helion override (``torchtitan.overrides.helion_rope``:
``HelionComplexRoPE`` / ``HelionCosSinRoPE``) where ``helion`` imports (else its rows are skipped,
with the reason in the output and the JSON). Stock's forward gathers the cache rows of the positions
first (a ``(batch, seq, 1, width)`` copy); the fused and Helion forwards read the cache by position.

Both lines also time ``cacheless (pairs)`` / ``cacheless (halves)``: ``rotate_cacheless``, the op that
computes cos and sin in registers from ``inv_freq`` (same YaRN frequencies) and reads no cache.

Forward alone and forward + backward (``torch.autograd.grad`` of a fixed upstream gradient), and
the op's backward alone (it is the same kernel rotating by the opposite angle). The fused rows call
``titan_rope_ext.kernels.rotary.rotate``, what the model's drop-in calls. Each is timed two ways:

* ``ms``: one call as the host issues it (``do_bench``: L2 flushed, a CUDA event pair around the
  call), which includes whatever host launch cost exceeds the flush's GPU time;
* ``gpu ms``: the GPU time alone, 20 calls captured in a CUDA graph and replayed (``graphed_ms``);
  "n/a" where a candidate cannot be captured.

Bandwidth is the bytes the op must move (read q, k; write both; the cache reads are not counted)
over its time, and "% copy" divides it by the copy bandwidth of the same run: the faster of the
copy's two timings (at 1.3 GB the graphed copy was the slower one), for both columns.
``host us`` is the wall time per call of 500 back-to-back calls on a tiny shape (1, 16, 4|2, 128):
the launch cost a host-bound step pays; ``+bwd`` the same for forward and backward through
``torch.autograd.grad`` (q and k need gradients). ``--sweep`` first times the fused forward at the
first shape for several tile sizes and warp counts (the kernel's ``_TILE`` / ``_NUM_WARPS``).
``--cacheless-config best`` first times the cacheless forward (CUDA graph) at every ``--seqs`` for each
tile and warp count (``_TILE_CACHELESS`` / ``_NUM_WARPS_CACHELESS``), both layouts, and times the
cacheless rows with the pair of least total time relative to each shape's fastest; the report records
the sweep and the pair used (``cacheless_tile_warps``).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from importlib.metadata import PackageNotFoundError, version

import torch


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=200, return_mode="median")


def yarn_frequencies(seq: int, head_dim: int, device) -> tuple[torch.Tensor, float]:
    """``(inv_freq, attention_factor)`` of the YaRN x4 section every candidate here rotates with."""
    from titan_rope_ext import RopeScaling, rope_frequencies

    cfg = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=max(1, seq // 4))
    with torch.device(device):
        return rope_frequencies(cfg, head_dim, 500000.0, seq)


def caches(seq: int, head_dim: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The complex (llama3) and [cos | sin] (qwen3) caches of the same YaRN frequencies."""
    from titan_rope_ext.cache import complex_cache, cos_sin_cache

    inv_freq, factor = yarn_frequencies(seq, head_dim, device)
    with torch.device(device):
        return complex_cache(inv_freq, factor, seq), cos_sin_cache(inv_freq, factor, seq)


def cacheless_candidates(q, positions=None) -> dict[str, dict]:
    """The cacheless op (``rotate_cacheless``: cos and sin computed in registers from ``inv_freq``, no cache
    read), both layouts, on the same YaRN frequencies as the cached rows."""
    from titan_rope_ext.kernels.rotary import rotate_cacheless

    inv_freq, factor = yarn_frequencies(q.shape[1], q.shape[-1], q.device)
    inv_freq = inv_freq.float()
    return {f"cacheless ({layout})": {
        "fn": lambda a, b, pairs=pairs: rotate_cacheless(a, b, inv_freq, factor, positions, pairs, False),
        "layout": layout,
        "bwd": lambda a, b, pairs=pairs: rotate_cacheless(a, b, inv_freq, factor, positions, pairs, True)}
        for layout, pairs in (("pairs", True), ("halves", False))}


def candidates02(q, k, freqs_cis, rope_cache) -> dict[str, dict]:
    """torchtitan 0.2: name -> {"fn": (q, k) -> (q_out, k_out), "layout": ...}."""
    from torchtitan.models.llama3.model import model as llama3
    from torchtitan.models.qwen3.model import model as qwen3

    from titan_rope_ext.kernels.rotary import rotate
    from titan_rope_ext.cache import cache_views

    head_dim = q.shape[-1]
    pair_cos, pair_sin = cache_views(freqs_cis, head_dim, pairs=True)
    half_cos, half_sin = cache_views(rope_cache, head_dim, pairs=False)
    out = {
        "llama3 stock eager": {"fn": lambda a, b: llama3.apply_rotary_emb(a, b, freqs_cis), "layout": "pairs"},
        "llama3 stock compiled": {"fn": torch.compile(lambda a, b: llama3.apply_rotary_emb(a, b, freqs_cis),
                                                      fullgraph=True, dynamic=False), "layout": "pairs"},
        "fused (pairs)": {"fn": lambda a, b: rotate(a, b, pair_cos, pair_sin, None, True, False), "layout": "pairs",
                          "bwd": lambda a, b: rotate(a, b, pair_cos, pair_sin, None, True, True)},
        "qwen3 stock eager": {"fn": lambda a, b: qwen3.apply_rotary_emb(a, b, rope_cache), "layout": "halves"},
        "qwen3 stock compiled": {"fn": torch.compile(lambda a, b: qwen3.apply_rotary_emb(a, b, rope_cache),
                                                     fullgraph=True, dynamic=False), "layout": "halves"},
        "fused (halves)": {"fn": lambda a, b: rotate(a, b, half_cos, half_sin, None, False, False),
                           "layout": "halves",
                           "bwd": lambda a, b: rotate(a, b, half_cos, half_sin, None, False, True)},
    }
    out.update(liger_candidate(q, rope_cache))
    out.update(cacheless_candidates(q))
    return out


def liger_candidate(q, rope_cache) -> dict[str, dict]:
    """Liger's rotate-half kernel on the ``[cos | sin]`` cache's rows (no positions), if it imports."""
    try:
        from liger_kernel.ops.rope import LigerRopeFunction
    except ImportError as err:
        print(f"liger-kernel not importable ({err}); its row is skipped", file=sys.stderr)
        return {}
    seq, head_dim = q.shape[1], q.shape[-1]
    cos = rope_cache[:seq, :head_dim].to(q.dtype)[None]  # (1, seq, head_dim), as Liger takes them
    sin = rope_cache[:seq, head_dim:].to(q.dtype)[None]

    def liger(a, b):  # Liger wants (batch, heads, seq, dim); transposing back gives our layout
        qo, ko = LigerRopeFunction.apply(a.transpose(1, 2), b.transpose(1, 2), cos, sin)
        return qo.transpose(1, 2), ko.transpose(1, 2)

    return {"liger (halves)": {"fn": liger, "layout": "halves"}}


def positions_for(kind: str, batch: int, seq: int, device: str) -> torch.Tensor | None:
    """``None``, or per-document positions ``(batch, seq)`` as 0.3's dataloader builds them: packed
    documents of a different length in each row (positions restart at 0 at each document)."""
    if kind == "none":
        return None
    return torch.stack([torch.arange(seq, device=device) % (997 + 500 * b) for b in range(batch)])


HELION_ERROR: str | None = None
"""Why torchtitan's Helion override could not run here (set by ``candidates03``), None where it ran."""


def candidates03(q, k, positions) -> dict[str, dict]:
    """torchtitan 0.3: name -> {"fn": (q, k) -> (q_out, k_out), "layout": ...}: RoPE modules with
    ``max_seq_len = seq``, called as the attentions call them, ``rope(q, k, positions)``."""
    global HELION_ERROR
    from torchtitan.models.common.rope import ComplexRoPE, CosSinRoPE

    from titan_rope_ext import RopeScaling
    from titan_rope_ext.cache import cache_views
    from titan_rope_ext.kernels.rotary import rotate
    from titan_rope_ext.torchtitan03.rope import ScaledComplexRoPE, ScaledCosSinRoPE

    seq, head_dim = q.shape[1], q.shape[-1]
    stock = dict(dim=head_dim, max_seq_len=seq, theta=500000.0)
    section = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=max(1, seq // 4), apply="fused")
    with torch.device(q.device):
        llama3 = ComplexRoPE.Config(**stock, scaling="llama").build()  # stock llama3's RoPE
        qwen3 = CosSinRoPE.Config(**stock).build()  # stock qwen3's RoPE (theta aside: it does not change the work)
        pairs = ScaledComplexRoPE.Config(**stock, rope_scaling=section).build()
        halves = ScaledCosSinRoPE.Config(**stock, rope_scaling=section).build()
    assert pairs.config.rope_scaling.apply == halves.config.rope_scaling.apply == "fused"
    pair_cos, pair_sin = cache_views(pairs.cache, head_dim, pairs=True)
    half_cos, half_sin = cache_views(halves.cache, head_dim, pairs=False)
    compiled = functools.partial(torch.compile, fullgraph=True, dynamic=False)
    out = {
        "llama3 stock eager": {"fn": lambda a, b: llama3(a, b, positions), "layout": "pairs"},
        "llama3 stock compiled": {"fn": compiled(lambda a, b: llama3(a, b, positions)), "layout": "pairs"},
        "fused (pairs)": {"fn": lambda a, b: pairs(a, b, positions), "layout": "pairs",
                          "bwd": lambda a, b: rotate(a, b, pair_cos, pair_sin, positions, True, True)},
        "qwen3 stock eager": {"fn": lambda a, b: qwen3(a, b, positions), "layout": "halves"},
        "qwen3 stock compiled": {"fn": compiled(lambda a, b: qwen3(a, b, positions)), "layout": "halves"},
        "fused (halves)": {"fn": lambda a, b: halves(a, b, positions), "layout": "halves",
                           "bwd": lambda a, b: rotate(a, b, half_cos, half_sin, positions, False, True)},
    }
    from torchtitan.overrides import helion_rope

    if helion_rope._HELION_IMPORT_ERROR is not None:
        HELION_ERROR = f"helion not importable: {helion_rope._HELION_IMPORT_ERROR}"
        print(f"{HELION_ERROR}; torchtitan.overrides.helion_rope's rows are skipped", file=sys.stderr)
    else:
        with torch.device(q.device):
            helion_pairs = helion_rope.HelionComplexRoPE.Config(**stock, scaling="llama").build()
            helion_halves = helion_rope.HelionCosSinRoPE.Config(**stock).build()
        out["helion (pairs)"] = {"fn": lambda a, b: helion_pairs(a, b, positions), "layout": "pairs"}
        out["helion (halves)"] = {"fn": lambda a, b: helion_halves(a, b, positions), "layout": "halves"}
    if positions is None:  # Liger takes no positions
        out.update(liger_candidate(q, qwen3.cache))
    out.update(cacheless_candidates(q, positions))
    return out


def gpu_ms(fn) -> float | None:
    """``graphed_ms(fn)``, None where ``fn`` cannot be captured in a CUDA graph."""
    try:
        return graphed_ms(fn)
    except Exception as err:  # noqa: BLE001 - a candidate that cannot be graphed gets "n/a"
        print(f"no CUDA graph: {type(err).__name__}: {str(err)[:200]}", file=sys.stderr)
        torch.cuda.synchronize()
        return None


def host_us(fn, calls: int = 500) -> float:
    """Wall time per call of ``calls`` back-to-back calls (then one synchronize), in microseconds."""
    import time

    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def timings(fn, limit_ms: float, prefix: str) -> dict:
    """``fn``'s two timings and each as a percentage of copy bandwidth (``limit_ms``: its bytes at that)."""
    ms, gpu = bench(fn), gpu_ms(fn)
    return {f"{prefix}_ms": ms, f"{prefix}_pct_copy": 100 * limit_ms / ms, f"{prefix}_gpu_ms": gpu,
            f"{prefix}_gpu_pct_copy": None if gpu is None else 100 * limit_ms / gpu}


def run_shape(batch: int, seq: int, q_heads: int, k_heads: int, head_dim: int, line: str, positions: str) -> dict:
    torch.manual_seed(0)
    q = torch.randn(batch, seq, q_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, seq, k_heads, head_dim, device="cuda", dtype=torch.bfloat16)
    grad_q, grad_k = torch.randn_like(q), torch.randn_like(k)
    nbytes = 2 * (q.numel() + k.numel()) * q.element_size()  # read q, k and write both
    src = torch.empty(q.numel() + k.numel(), device="cuda", dtype=torch.bfloat16)
    dst = torch.empty_like(src)
    copy_ms, copy_gpu_ms = bench(lambda: dst.copy_(src)), graphed_ms(lambda: dst.copy_(src))
    reference = min(copy_ms, copy_gpu_ms)  # the faster copy timing is the bandwidth both columns divide by
    tiny_q, tiny_k = q[:1, :16, :4].clone(), k[:1, :16, :2].clone()
    if line == "0.3":
        tiny = candidates03(tiny_q, tiny_k, positions_for(positions, 1, 16, "cuda"))
        full = candidates03(q, k, positions_for(positions, batch, seq, "cuda"))
    else:
        freqs_cis, rope_cache = caches(seq, head_dim, "cuda")
        tiny = candidates02(tiny_q, tiny_k, freqs_cis[:16], rope_cache[:16])
        full = candidates02(q, k, freqs_cis, rope_cache)
    tiny_qg, tiny_kg = tiny_q.clone().requires_grad_(), tiny_k.clone().requires_grad_()
    tiny_grads = torch.randn_like(tiny_q), torch.randn_like(tiny_k)
    rows = {}
    for name, c in full.items():
        fn = c["fn"]
        qg, kg = q.detach().clone().requires_grad_(), k.detach().clone().requires_grad_()

        def fwd_bwd(fn=fn, qg=qg, kg=kg):
            qo, ko = fn(qg, kg)
            torch.autograd.grad((qo, ko), (qg, kg), (grad_q, grad_k))

        tiny_fn = tiny[name]["fn"]

        def tiny_fwd_bwd(fn=tiny_fn):
            torch.autograd.grad(fn(tiny_qg, tiny_kg), (tiny_qg, tiny_kg), tiny_grads)

        row = {"layout": c["layout"], "host_us": host_us(lambda fn=tiny_fn: fn(tiny_q, tiny_k)),
               "host_fwd_bwd_us": host_us(tiny_fwd_bwd)}
        row.update(timings(lambda fn=fn: fn(q, k), reference, "fwd"))
        row.update(timings(fwd_bwd, 2 * reference, "fwd_bwd"))  # twice the bytes
        if "bwd" in c:
            row.update(timings(lambda c=c: c["bwd"](grad_q, grad_k), reference, "bwd"))
        rows[name] = row
    for layout, fused in (("pairs", "fused (pairs)"), ("halves", "fused (halves)")):
        for name, row in rows.items():
            if row["layout"] == layout and name != fused:
                for key in ("fwd_ms", "fwd_gpu_ms", "fwd_bwd_ms", "fwd_bwd_gpu_ms"):
                    if row[key] is not None and rows[fused][key] is not None:
                        row[f"fused_speedup_{key}"] = row[key] / rows[fused][key]
    return {"q": list(q.shape), "k": list(k.shape), "dtype": "bfloat16", "bytes_moved": nbytes,
            "positions": positions if line == "0.3" else "none",
            "copy_ms": copy_ms, "copy_gpu_ms": copy_gpu_ms, "copy_GBps": nbytes / copy_ms / 1e6,
            "copy_gpu_GBps": nbytes / copy_gpu_ms / 1e6, "copy_reference_ms": reference, "rows": rows}


def graphed_ms(fn) -> float:
    """``fn``'s GPU time with the host's launch cost removed: 20 calls captured in a CUDA graph, replayed."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(20):
            fn()
    return bench(graph.replay) / 20


def sweep(batch: int, seq: int) -> list[dict]:
    """The cached kernel's forward at ``seq`` for several ``_TILE`` / ``_NUM_WARPS``, both layouts."""
    from titan_rope_ext.kernels import rotary as kernel
    from titan_rope_ext.cache import cache_views

    q = torch.randn(batch, seq, 32, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, seq, 8, 128, device="cuda", dtype=torch.bfloat16)
    freqs_cis, rope_cache = caches(seq, 128, "cuda")
    layouts = ((True, cache_views(freqs_cis, 128, pairs=True)), (False, cache_views(rope_cache, 128, pairs=False)))
    shipped = kernel._TILE, kernel._NUM_WARPS
    rows = []
    try:
        for tile in (1024, 2048, 4096):
            for warps in (4, 8):
                kernel._TILE, kernel._NUM_WARPS = tile, warps
                for pairs, (cos, sin) in layouts:
                    ms = bench(lambda: kernel.launch(q, k, cos, sin, None, pairs, False, traceable=False))
                    graphed = graphed_ms(lambda: kernel.launch(q, k, cos, sin, None, pairs, False, traceable=False))
                    rows.append({"tile": tile, "warps": warps, "pairs": pairs, "fwd_ms": ms, "graphed_ms": graphed})
                    print(f"sweep tile {tile:6} warps {warps} pairs {pairs!s:5} {ms:.4f} ms, in a CUDA graph "
                          f"{graphed:.4f} ms", flush=True)
    finally:
        kernel._TILE, kernel._NUM_WARPS = shipped
    return rows


CACHELESS_TILES = (1024, 2048, 4096, 8192)
CACHELESS_WARPS = (4, 8)


def sweep_cacheless(batch: int, seqs: list[int]) -> dict:
    """The cacheless kernel's forward GPU time (CUDA graph) for each ``_TILE_CACHELESS`` x
    ``_NUM_WARPS_CACHELESS``, both layouts, at every length; ``best``: the pair with the least total time."""
    from titan_rope_ext.kernels import rotary as kernel

    shipped = kernel._TILE_CACHELESS, kernel._NUM_WARPS_CACHELESS
    rows = []
    try:
        for seq in seqs:
            inv_freq, factor = yarn_frequencies(seq, 128, "cuda")
            inv_freq = inv_freq.float()
            q = torch.randn(batch, seq, 32, 128, device="cuda", dtype=torch.bfloat16)
            k = torch.randn(batch, seq, 8, 128, device="cuda", dtype=torch.bfloat16)
            for tile in CACHELESS_TILES:
                for warps in CACHELESS_WARPS:
                    kernel._TILE_CACHELESS, kernel._NUM_WARPS_CACHELESS = tile, warps
                    for pairs in (True, False):
                        run = lambda: kernel.launch_cacheless(q, k, inv_freq, factor, None, pairs, False,  # noqa: E731
                                                              traceable=False)
                        graphed = graphed_ms(run)
                        rows.append({"seq": seq, "tile": tile, "warps": warps, "pairs": pairs, "graphed_ms": graphed})
                        print(f"sweep cacheless seq {seq:6} tile {tile:5} warps {warps} pairs {pairs!s:5} "
                              f"{graphed:.4f} ms in a CUDA graph", flush=True)
            del q, k
            torch.cuda.empty_cache()
    finally:
        kernel._TILE_CACHELESS, kernel._NUM_WARPS_CACHELESS = shipped
    totals = {}
    for row in rows:
        key = (row["tile"], row["warps"])
        totals[key] = totals.get(key, 0.0) + row["graphed_ms"] / min(
            r["graphed_ms"] for r in rows if (r["seq"], r["pairs"]) == (row["seq"], row["pairs"]))
    best = min(totals, key=totals.get)
    return {"rows": rows, "shipped": list(shipped), "best": list(best),
            "relative_total": {f"{t}/{w}": round(v, 4) for (t, w), v in sorted(totals.items())}}


def table(result: dict) -> str:
    def cell(row: dict, key: str) -> str:
        ms, pct = row.get(f"{key}_ms"), row.get(f"{key}_pct_copy")
        return f"{ms:8.4f} {pct:5.1f}%" if ms is not None else f"{'n/a':>8} {'':6}"

    lines = [f"q {tuple(result['q'])}, k {tuple(result['k'])} bf16, positions {result['positions']}: "
             f"{result['bytes_moved'] / 1e6:.1f} MB moved; "
             f"copy {result['copy_ms']:.4f} ms ({result['copy_GBps']:.0f} GB/s), GPU time "
             f"{result['copy_gpu_ms']:.4f} ms ({result['copy_gpu_GBps']:.0f} GB/s); % copy uses "
             f"{result['copy_reference_ms']:.4f} ms",
             f"{'':22} {'host us':>7} {'+bwd':>6} | {'fwd ms':>8} {'%copy':>6} {'gpu ms':>8} {'%copy':>6} | "
             f"{'bwd gpu ms':>10} {'%copy':>6} | {'fwd+bwd ms':>10} {'%copy':>6} {'gpu ms':>8} {'%copy':>6} | "
             "fused is x faster (fwd, fwd gpu, fwd+bwd, fwd+bwd gpu)"]
    for name, r in result["rows"].items():
        speed = ", ".join(f"{r[k]:.2f}x" if k in r else "n/a" for k in
                          ("fused_speedup_fwd_ms", "fused_speedup_fwd_gpu_ms", "fused_speedup_fwd_bwd_ms",
                           "fused_speedup_fwd_bwd_gpu_ms")) if not name.startswith("fused") else ""
        bwd = cell(r, "bwd_gpu") if "bwd_gpu_ms" in r else f"{'':8} {'':6}"
        lines.append(f"{name:22} {r['host_us']:7.1f} {r['host_fwd_bwd_us']:6.0f} | {cell(r, 'fwd')} "
                     f"{cell(r, 'fwd_gpu')} |   {bwd} |   {cell(r, 'fwd_bwd')} {cell(r, 'fwd_bwd_gpu')} | {speed}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seqs", default="8192,32768")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--cacheless-config", default="shipped", choices=["shipped", "best"],
                        help="best: sweep the cacheless kernel's tile and warps first (every --seqs, both "
                             "layouts) and time the cacheless rows with the best pair (recorded in the report)")
    parser.add_argument("--positions", default="batch", choices=["batch", "none"],
                        help="torchtitan 0.3: positions passed to the RoPE modules (default: per-document, "
                             "as 0.3's dataloader gives them); 0.2's rows take none")
    opts = parser.parse_args(argv)
    from titan_rope_ext._torchtitan import torchtitan_line

    line = torchtitan_line()
    if line is None:
        raise SystemExit("rope_apply: needs torchtitan 0.2.x or 0.3.x")
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
              "torchtitan_line": line, "torchtitan": version("torchtitan")}
    for package in ("liger-kernel", "helion"):
        try:
            report[package.replace("-", "_")] = version(package)
        except PackageNotFoundError:
            report[package.replace("-", "_")] = None
    import triton

    report["triton"] = triton.__version__
    seqs = [int(s) for s in opts.seqs.split(",")]
    if opts.sweep:
        report["sweep"] = sweep(opts.batch, seqs[0])
    if opts.cacheless_config == "best":
        from titan_rope_ext.kernels import rotary as kernel

        report["sweep_cacheless"] = found = sweep_cacheless(opts.batch, seqs)
        kernel._TILE_CACHELESS, kernel._NUM_WARPS_CACHELESS = found["best"]
        print(f"cacheless rows below use tile {found['best'][0]}, warps {found['best'][1]} (shipped: "
              f"{found['shipped'][0]}, {found['shipped'][1]}); relative totals {found['relative_total']}", flush=True)
    from titan_rope_ext.kernels import rotary as kernel

    report["cacheless_tile_warps"] = [kernel._TILE_CACHELESS, kernel._NUM_WARPS_CACHELESS]
    report["shapes"] = []
    for seq in seqs:
        result = run_shape(opts.batch, seq, 32, 8, 128, line, opts.positions)
        report["shapes"].append(result)
        if line == "0.3":
            report["helion_skipped"] = HELION_ERROR
        print(table(result), flush=True)
        torch.cuda.empty_cache()
    if opts.out:
        with open(opts.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
