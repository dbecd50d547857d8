"""Does rope_scaling cost anything per training step on torchtitan 0.3? Stock vs converted, side by side.

Usage (torchtitan 0.3.0 and this repo importable)::

    python benchmarks/overhead03.py [--layers 2] [--seq 8192] [--rounds 12] [--steps 5] [--out FILE.json]
    python benchmarks/overhead03.py --apply fused --layers 4 --out FILE.json   # stock vs apply = "fused"
    python benchmarks/overhead03.py --device cpu --dim 64 --heads 4 --kv-heads 2 --ffn 128 --vocab 256 \\
        --seq 64 --rounds 2 --steps 1 --no-compile --out toy.json          # the CPU test's toy run

The model is torchtitan 0.3's own llama3 "8B" flavor config (``model_registry("8B")``, what its
``llama3_8b`` job uses: dim 4096, 32 heads, 8 KV heads, FFN 14336, vocab 128256, theta 5e5,
FlexAttention) cut to ``--layers`` layers, so two copies and their AdamW states fit one GPU. Both copies
go through the Trainer's own steps: ``update_from_config`` (every RoPE's ``max_seq_len`` becomes
``--seq``), ``build()`` on the meta device, ``to_empty``, ``init_weights`` (-> ``init_states``, which
rebuilds each RoPE cache on the device). Stock keeps the flavor's RoPE (``ComplexRoPE``, ``scaling =
"llama"``); converted has every RoPE swapped by ``titan_rope_ext.torchtitan03.models.scale_model`` for
YaRN x4 over ``--seq // 4`` positions, then loads the stock copy's weights. ``--apply fused`` converts
with ``apply = "fused"`` (q and k rotated by the Triton op inside our RoPE modules' ``forward``); the
report counts the kernel's launches in one eager forward of each copy (one per layer where the fused
path runs; 0 on CPU, where our modules take stock's ``forward``). ``--apply fused_cacheless``: the cacheless
kernel (no cache rows; cos and sin from ``inv_freq`` in registers), counted the same way (on CPU the op's
torch implementation runs, no launch).

A training step is forward (positions ``0..seq-1`` and the causal block mask that the Trainer builds
from them, made once outside the timing), cross-entropy on the full logits, backward and a fused AdamW
step under bf16 autocast, as the 0.2 benchmark (``benchmarks/overhead.py``) does. That is not 0.3's
Trainer step: on one GPU it runs ``fully_shard`` with degree 1 (bf16 parameters through its mixed
precision policy, no autocast), a chunked loss, and ``llama3_8b`` adds selective activation
checkpointing. Those act on both copies alike; the RoPE cache is complex64 in both.

The two copies alternate in ``--rounds`` rounds of ``--steps`` timed steps (CUDA events on a GPU,
``perf_counter`` on a CPU; the order flips every round), eager and then with every block compiled by
torchtitan 0.3's own ``apply_compile`` (``torch.compile(fullgraph=True)`` per block); tokens/s are
medians over rounds and the ratio is converted / stock. On a GPU, ``torch.cuda.set_sync_debug_mode
("error")`` is set around one step of each copy after the warm-up of each mode: it raises on a
host-device synchronization. The RoPE cache bytes per model (all RoPE modules' buffers, each
storage counted once) are reported for both copies.

``--out`` is written after every phase, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import math
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

# torchtitan 0.3.0's llama3 "8B" flavor (models/llama3/__init__.py); checked against the built config
EIGHT_B = {"dim": 4096, "heads": 32, "kv_heads": 8, "ffn": 14336, "vocab": 128256, "theta": 500000.0}


def shape_of(config) -> dict:
    """The shape read back from a llama3 model config."""
    attention = config.layers[0].attention
    return {"layers": len(config.layers), "dim": config.dim, "heads": attention.n_heads,
            "kv_heads": attention.n_kv_heads, "ffn": config.layers[0].feed_forward.w1.out_features,
            "vocab": config.vocab_size, "theta": float(attention.rope.theta), "head_dim": attention.rope.dim,
            "rope_max_seq_len": attention.rope.max_seq_len,
            "inner_attention": type(attention.inner_attention).__qualname__}


def model_config(opts, section=None):
    """torchtitan 0.3's llama3 8B config with ``opts.layers`` layers (toy shapes on request), as the Trainer sees it.

    ``section`` set: every RoPE is swapped for ours by the package's 0.3 glue, with the cache sized
    for ``opts.seq`` (as ``RopeTrainer`` does, before ``update_from_config``).
    """
    from torchtitan.models import llama3
    from torchtitan.models.common.attention import ScaledDotProductAttention
    from torchtitan.trainer import Trainer

    config = llama3.model_registry("8B", attn_backend="flex").model
    config.layers = config.layers[:opts.layers]
    toy = {k: getattr(opts, k) for k in ("dim", "heads", "kv_heads", "ffn", "vocab") if getattr(opts, k) is not None}
    if toy:  # the CPU test's shapes: 0.3's own layer builder, the flavor's embedding/norm/head configs resized
        shape = {**EIGHT_B, **toy}
        rope = config.layers[0].attention.rope
        layers = llama3._build_llama3_layers(
            n_layers=opts.layers, dim=shape["dim"], n_heads=shape["heads"], n_kv_heads=shape["kv_heads"],
            hidden_dim=shape["ffn"], rope=dataclasses.replace(rope, dim=shape["dim"] // shape["heads"]),
            attn_backend="flex")
        config = dataclasses.replace(
            config, dim=shape["dim"], vocab_size=shape["vocab"], layers=layers,
            tok_embeddings=dataclasses.replace(config.tok_embeddings, num_embeddings=shape["vocab"],
                                               embedding_dim=shape["dim"]),
            norm=dataclasses.replace(config.norm, normalized_shape=shape["dim"]),
            lm_head=dataclasses.replace(config.lm_head, in_features=shape["dim"], out_features=shape["vocab"]))
    if opts.attn == "sdpa":  # causal SDPA: the same attention for one document per row; CPU (flex has no CPU backward)
        for layer in config.layers:
            layer.attention = dataclasses.replace(layer.attention, inner_attention=ScaledDotProductAttention.Config())
    summary = None
    if section is not None:
        from titan_rope_ext.torchtitan03.models import scale_model

        summary = scale_model(config, section, max_seq_len=opts.seq, model_name="llama3")
    trainer_config = Trainer.Config()
    trainer_config.training.seq_len = opts.seq
    config.update_from_config(config=trainer_config)  # Trainer.__init__'s step: RoPE max_seq_len = seq
    return config, summary


def build(config, device: torch.device):
    """As torchtitan 0.3's Trainer: build on meta, ``to_empty``, ``init_weights`` (caches rebuilt on ``device``)."""
    with torch.device("meta"):
        model = config.build()
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=None)
    return model.train()


def rope_cache_bytes(model) -> dict:
    """All RoPE modules' buffers of ``model``: count, shape, dtype and bytes, each storage counted once."""
    from torchtitan.models.common.rope import RoPE

    storages, n_modules, buffers = {}, 0, []
    for module in model.modules():
        if isinstance(module, RoPE):
            n_modules += 1
            for buf in module.buffers(recurse=False):
                buffers.append(buf)
                storage = buf.untyped_storage()
                storages[(str(buf.device), storage.data_ptr())] = storage.nbytes()
    return {"rope_modules": n_modules, "buffers": len(buffers), "unique_storages": len(storages),
            "bytes": sum(storages.values()), "buffer_shape": list(buffers[0].shape) if buffers else None,
            "buffer_dtype": str(buffers[0].dtype) if buffers else None}


def rotary_launches(model, batch: dict) -> int:
    """Fused-kernel launches in one eager forward of ``model`` (no grad, bf16 autocast): on CUDA the
    fused path's eager entry launches the kernel itself, once per layer (q and k together)."""
    from titan_rope_ext.kernels import rotary

    launches, calls = {name: getattr(rotary, name) for name in ("launch", "launch_cacheless")}, []
    for name, launch in launches.items():
        setattr(rotary, name, lambda *args, launch=launch, **kwargs: calls.append(1) or launch(*args, **kwargs))
    try:
        with torch.no_grad(), torch.autocast(batch["tokens"].device.type, dtype=torch.bfloat16):
            model(batch["tokens"], positions=batch["positions"], attention_masks=batch["masks"])
    finally:
        for name, launch in launches.items():
            setattr(rotary, name, launch)
    return len(calls)


def make_step(model, device: torch.device, batch: dict):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = model(batch["tokens"], positions=batch["positions"], attention_masks=batch["masks"])
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def time_steps(step, n: int, device: torch.device) -> float:
    """Seconds per step over ``n`` back-to-back steps."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(n):
            step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000 / n
    begin = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - begin) / n


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def host_sync(step, device: torch.device) -> str:
    """``"none"`` if one step ran under ``set_sync_debug_mode("error")`` without raising, else the error."""
    if device.type != "cuda":
        return "not checked (no CUDA)"
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        return "none"
    except RuntimeError as err:
        return f"SYNC: {err}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
        torch.cuda.synchronize()


def compare(steps: dict, device: torch.device, ntok: int, opts) -> dict:
    """Warm-up, the no-sync check, then alternating timed rounds; medians, ratio, ranges, every round."""
    began = time.perf_counter()
    for step in steps.values():  # warm-up (and, on first use, compilation / flex autotuning)
        for _ in range(opts.warmup):
            step()
    synchronize(device)
    warmup_s = time.perf_counter() - began
    sync = {name: host_sync(step, device) for name, step in steps.items()}
    per_step = {name: [] for name in steps}
    for r in range(opts.rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # alternate who goes first
        for name in order:
            per_step[name].append(time_steps(steps[name], opts.steps, device))
    tps = {name: ntok / statistics.median(times) for name, times in per_step.items()}
    return {
        "tokens_per_s": tps,
        "ratio": tps["converted"] / tps["stock"],
        "step_ms_median": {k: round(1000 * statistics.median(v), 3) for k, v in per_step.items()},
        "step_ms_min_max": {k: [round(1000 * min(v), 3), round(1000 * max(v), 3)] for k, v in per_step.items()},
        "step_ms_per_round": {k: [round(1000 * t, 4) for t in v] for k, v in per_step.items()},
        "host_device_sync": sync,
        "warmup_s": round(warmup_s, 1),
        "timed_s": round(time.perf_counter() - began - warmup_s, 1),
    }


def versions() -> dict:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchtitan", "triton"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--attn", default=None, choices=["flex", "sdpa"],
                        help="inner attention (default: flex, as llama3_8b, on CUDA; causal SDPA on CPU)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model before each mode")
    parser.add_argument("--no-compile", action="store_true", help="eager only")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (apply_compile's)")
    for flag in ("dim", "heads", "kv-heads", "ffn", "vocab"):
        parser.add_argument(f"--{flag}", type=int, default=None, help="toy shape (default: the 8B flavor's)")
    parser.add_argument("--apply", default="torchtitan", choices=["torchtitan", "fused", "fused_cacheless"],
                        help="the converted copy's rope_scaling.apply")
    parser.add_argument("--out", default=None)
    opts = parser.parse_args(argv)
    opts.device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts.attn = opts.attn or ("flex" if opts.device == "cuda" else "sdpa")
    return opts


def main(argv=None) -> int:
    opts = parse(argv)
    device = torch.device(opts.device)
    began = time.perf_counter()

    def log(text: str) -> None:
        print(f"[overhead03 {time.perf_counter() - began:7.1f}s] {text}", flush=True)

    def save(report: dict) -> None:
        if opts.out:
            with open(opts.out, "w") as handle:
                json.dump(report, handle, indent=1)

    from titan_rope_ext import RopeScaling

    section = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=opts.seq // 4,
                          apply=opts.apply)
    stock_config, _ = model_config(opts)
    converted_config, summary = model_config(opts, section)
    shape = shape_of(stock_config)
    if not any(getattr(opts, k) is not None for k in ("dim", "heads", "kv_heads", "ffn", "vocab")):
        wrong = {k: (shape[k], v) for k, v in EIGHT_B.items() if shape[k] != v}
        if wrong:
            raise SystemExit(f"overhead03: the 8B flavor is not what this benchmark says it is: {wrong}")
    stock_rope = stock_config.layers[0].attention.rope
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "device_memory_gib": (round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
                              if device.type == "cuda" else None),
        "versions": versions(),
        "command": " ".join(sys.argv),
        "args": vars(opts),
        "shape": shape,
        "step": f"batch {opts.batch} x seq {opts.seq}: forward ("
                + ("positions, FlexAttention with the Trainer's causal block mask" if opts.attn == "flex"
                   else "positions, causal SDPA") + "), cross-entropy on full logits, backward, fused AdamW; "
                "bf16 autocast",
        "stock_rope": f"{type(stock_rope).__qualname__} scaling={stock_rope.scaling} "
                      f"factor={stock_rope.scaling_factor} low={stock_rope.low_freq_factor} "
                      f"high={stock_rope.high_freq_factor} original={stock_rope.original_max_position_embeddings} "
                      f"max_seq_len={stock_rope.max_seq_len}",
        "converted_rope": summary,
    }
    log(f"{report['device']}; {report['versions']}; shape {shape}")

    torch.manual_seed(0)
    stock = build(stock_config, device)
    converted = build(converted_config, device)
    converted.load_state_dict(stock.state_dict())  # same weights; the RoPE caches differ (llama vs YaRN x4)
    report["params_per_model"] = sum(p.numel() for p in stock.parameters())
    report["rope_cache"] = {"stock": rope_cache_bytes(stock), "converted": rope_cache_bytes(converted)}
    first = [model.layers["0"].attention.rope.cache for model in (stock, converted)]
    # > 0: the swap took (the cacheless copy has no cache rows to compare)
    report["layer0_cache_max_abs_diff"] = ((first[0] - first[1]).abs().max().item()
                                           if first[0].shape == first[1].shape else None)
    log(f"built both copies ({report['params_per_model'] / 1e9:.3f}B parameters each); "
        f"rope caches {report['rope_cache']}")

    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, shape["vocab"], (opts.batch, opts.seq), generator=gen).to(device)
    labels = torch.randint(0, shape["vocab"], (opts.batch, opts.seq), generator=gen).to(device)
    positions = torch.arange(opts.seq, device=device).expand(opts.batch, opts.seq).contiguous()
    # the Trainer builds the masks from the dataloader's positions for flex/varlen; identical for both copies
    masks = stock.get_attention_masks(positions=positions) if opts.attn == "flex" else None
    batch = {"tokens": tokens, "labels": labels, "positions": positions, "masks": masks}
    report["fused_launches_per_forward"] = {name: rotary_launches(model, batch)
                                            for name, model in (("stock", stock), ("converted", converted))}
    log(f"fused rotary kernel launches in one eager forward: {report['fused_launches_per_forward']}")
    steps = {"stock": make_step(stock, device, batch), "converted": make_step(converted, device, batch)}
    ntok = tokens.numel()
    save(report)

    report["eager"] = compare(steps, device, ntok, opts)
    if device.type == "cuda":
        report["eager"]["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    log(f"eager: {json.dumps({k: v for k, v in report['eager'].items() if k != 'step_ms_per_round'})}")
    save(report)

    if opts.no_compile:
        report["compiled"] = "skipped (--no-compile)"
    else:
        from torchtitan.config import CompileConfig
        from torchtitan.distributed.compile import apply_compile
        from torchtitan.distributed.parallel_dims import ParallelDims

        compile_config = CompileConfig(enable=True, components=["model"], backend=opts.compile_backend)
        one_device = ParallelDims(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, world_size=1)
        try:
            for model in (stock, converted):
                apply_compile(model, compile_config=compile_config, parallel_dims=one_device)
            report["compiled"] = compare(steps, device, ntok, opts)
        except Exception as err:  # keep the eager numbers and the reason in the JSON, then fail loudly
            report["compiled"] = f"FAILED: {type(err).__name__}: {err}"[:2000]
            save(report)
            raise
        report["compiled"]["how"] = f"torchtitan.distributed.compile.apply_compile, backend {opts.compile_backend}"
        if device.type == "cuda":
            report["compiled"]["max_memory_allocated_gib"] = round(
                torch.cuda.max_memory_allocated(device) / 2**30, 2)
        log(f"compiled: {json.dumps({k: v for k, v in report['compiled'].items() if k != 'step_ms_per_round'})}")
    report["total_s"] = round(time.perf_counter() - began, 1)
    save(report)
    for mode in ("eager", "compiled"):
        result = report[mode]
        if isinstance(result, dict):
            ratio = result["ratio"]
            print(f"{mode:9s} stock {result['tokens_per_s']['stock']:12,.0f} tok/s  converted "
                  f"{result['tokens_per_s']['converted']:12,.0f} tok/s  ratio {ratio:.4f}"
                  f"{'' if math.isfinite(ratio) else '  (not finite)'}  sync {result['host_device_sync']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
