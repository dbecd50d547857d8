"""Does the rope_scaling converter cost anything per training step? Stock vs converted, side by side.

Usage (one GPU, torchtitan 0.2.2 importable)::

    python benchmarks/overhead.py [--layers 2] [--seq 8192] [--rounds 12] [--steps 5] [--out FILE.json]
    python benchmarks/overhead.py --apply fused --out FILE.json    # stock vs apply = "fused"

Builds torchtitan's llama3 ``Transformer`` with 8B-shaped layers (dim 4096, 32 heads, 8 KV heads,
FFN 14336, vocab 128256, theta 5e5; ``--layers`` of them so two copies and their AdamW states fit
one GPU) twice in this process: stock, and converted by ``rope_scaling`` (meta device -> convert ->
``to_empty`` -> ``init_weights``, as torchtitan's Trainer does) with a YaRN section. The converted
copy starts from the stock copy's weights. A training step is forward, cross-entropy, backward and
a fused AdamW step under bf16 autocast (torchtitan's single-GPU path). The two models alternate in
``--rounds`` rounds of ``--steps`` timed steps (CUDA events), eager and then with each block under
``torch.compile(fullgraph=True)`` as torchtitan's ``apply_compile`` does; the tokens/s reported are
medians over rounds, and the ratio is converted / stock. ``--apply fused`` converts with
``apply = "fused"`` (q and k rotated by the Triton op) and skips the cache-build timing below;
``--apply fused_cacheless`` likewise, with the model's rotary buffer holding ``inv_freq`` instead of a cache
(the report's ``rotary_buffer`` gives both copies' buffers).

Then the cache build: ``rope_frequencies`` + ``complex_cache`` for 131072 positions at head_dim 128
on the GPU, every rope type, against torchtitan's own ``precompute_freqs_cis``, median of 50 after
warm-up; and ``torch.cuda.set_sync_debug_mode("error")`` around a converted training step and
around each cache build, which raises on any host-device synchronization.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys

import torch
import torch.nn.functional as F


def build(args, cfg=None):
    from torchtitan.models.llama3.model.model import Transformer

    from titan_rope_ext.torchtitan02.models.llama3 import ADAPTER

    with torch.device("meta"):
        model = Transformer(args)
    if cfg is not None:
        ADAPTER.convert(model, cfg)
    model.to_empty(device="cuda")
    with torch.no_grad():
        model.init_weights(buffer_device=torch.device("cuda"))
    return model


def make_step(model):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step(tokens, labels):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(tokens)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def time_steps(step, tokens, labels, n):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        step(tokens, labels)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000 / n  # seconds per step


def compare(steps: dict, tokens, labels, rounds: int, n: int) -> dict:
    for step in steps.values():  # warm-up (and compilation)
        for _ in range(3):
            step(tokens, labels)
    torch.cuda.synchronize()
    per_step = {name: [] for name in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))  # alternate who goes first
        for name in order:
            per_step[name].append(time_steps(steps[name], tokens, labels, n))
    ntok = tokens.numel()
    tps = {name: ntok / statistics.median(times) for name, times in per_step.items()}
    spread = {name: (min(times), max(times)) for name, times in per_step.items()}
    return {"tokens_per_s": tps, "ratio": tps["converted"] / tps["stock"],
            "step_ms_min_max": {k: [round(1000 * a, 3), round(1000 * b, 3)] for k, (a, b) in spread.items()}}


def cache_build_ms(seq: int, head_dim: int, theta: float) -> dict:
    from torchtitan.models.llama3.model.args import RoPEScalingArgs
    from torchtitan.models.llama3.model.model import precompute_freqs_cis

    from titan_rope_ext import RopeScaling, rope_frequencies
    from titan_rope_ext.cache import complex_cache

    sections = {
        "default": {},
        "linear": dict(factor=16.0),
        "ntk": dict(factor=16.0),
        "dynamic": dict(factor=16.0, original_max_position_embeddings=8192),
        "yarn": dict(factor=16.0, original_max_position_embeddings=8192),
        "llama3": dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192),
        "longrope": dict(short_factor=[1.0] * (head_dim // 2), long_factor=[4.0] * (head_dim // 2),
                         original_max_position_embeddings=8192),
    }
    builders = {"torchtitan precompute_freqs_cis (stock)":
                lambda: precompute_freqs_cis(head_dim, seq, theta, RoPEScalingArgs())}
    for rope_type, section in sections.items():
        cfg = RopeScaling(rope_type=rope_type, **section)

        def build_cache(cfg=cfg):
            inv_freq, factor = rope_frequencies(cfg, head_dim, theta, seq)
            return complex_cache(inv_freq, factor, seq)

        builders[rope_type] = build_cache
    result = {}
    for name, fn in builders.items():
        with torch.device("cuda"):
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(50):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            torch.cuda.set_sync_debug_mode("error")
            try:
                fn()
                sync = "none"
            except RuntimeError as err:
                sync = f"SYNC: {err}"
            finally:
                torch.cuda.set_sync_debug_mode("default")
        result[name] = {"median_ms": round(statistics.median(times), 4), "max_ms": round(max(times), 4),
                        "host_device_sync": sync}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seq", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--apply", default="torchtitan", choices=["torchtitan", "fused", "fused_cacheless"])
    parser.add_argument("--out", default=None)
    opts = parser.parse_args(argv)

    from torchtitan.models.llama3 import llama3_args

    from titan_rope_ext import RopeScaling

    torch.manual_seed(0)
    args = copy.deepcopy(llama3_args["8B"])
    args.n_layers, args.max_seq_len, args.vocab_size = opts.layers, opts.seq, 128256
    cfg = RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=opts.seq // 4,
                      apply=opts.apply)
    stock = build(args)
    converted = build(args, cfg)
    converted.load_state_dict(stock.state_dict())  # same weights; the caches differ (stock llama3 vs YaRN)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "command": " ".join(sys.argv),
              "shape": f"{opts.layers} llama3-8B layers, batch {opts.batch} x seq {opts.seq}, bf16 autocast, fused AdamW",
              "converter": cfg.describe(),
              # the model's one rotary buffer: the cache, or inv_freq with apply = "fused_cacheless"
              "rotary_buffer": {name: {"shape": list(m.freqs_cis.shape), "dtype": str(m.freqs_cis.dtype),
                                       "bytes": m.freqs_cis.numel() * m.freqs_cis.element_size()}
                                for name, m in (("stock", stock), ("converted", converted))}}
    tokens = torch.randint(0, args.vocab_size, (opts.batch, opts.seq), device="cuda")
    labels = torch.randint(0, args.vocab_size, (opts.batch, opts.seq), device="cuda")

    steps = {"stock": make_step(stock), "converted": make_step(converted)}
    torch.cuda.set_sync_debug_mode("error")  # raises on a host-device sync inside the converted step
    try:
        steps["converted"](tokens, labels)
        report["converted_step_host_device_sync"] = "none"
    except RuntimeError as err:
        report["converted_step_host_device_sync"] = f"SYNC: {err}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    report["eager"] = compare(steps, tokens, labels, opts.rounds, opts.steps)
    print(json.dumps({"eager": report["eager"]}, indent=1), flush=True)
    if not opts.no_compile:
        for model in (stock, converted):
            for layer_id, block in model.layers.named_children():
                model.layers.register_module(layer_id, torch.compile(block, fullgraph=True))
        report["compiled"] = compare(steps, tokens, labels, opts.rounds, opts.steps)
        print(json.dumps({"compiled": report["compiled"]}, indent=1), flush=True)
    del stock, converted, steps
    torch.cuda.empty_cache()
    if opts.apply == "torchtitan":
        report["cache_build_131072"] = cache_build_ms(131072, 128, 500000.0)
    print(json.dumps(report, indent=1))
    if opts.out:
        with open(opts.out, "w") as handle:
            json.dump(report, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
