"""RoPE cache memory on torchtitan 0.3: stock (one cache per layer) vs converted (one per model), per rank.

Usage (torchtitan 0.3.0 and this repo importable)::

    python benchmarks/rope_memory03.py --out rope_memory03.json              # GPU: parts a, b, c, d
    python benchmarks/rope_memory03.py --device cpu --out rope_memory03_cpu.json      # part a only (meta and CPU)
    python benchmarks/rope_memory03.py --device cpu --toy --out toy.json   # every part at toy size (the CPU test)

Parts (each writes into the JSON as soon as it is done; ``--out`` survives a run cut short; a part that raises
leaves its traceback under its key, the others still run, and the exit status is 1):

a. **Cache bytes per rank, meta and CPU** (any device). Llama-3-8B (``llama3.model_registry("8B")``, 32 layers,
   complex64 (seq, 64)) and Qwen3-0.6B (``qwen3.model_registry("0.6B")``, 28 layers, float32 (seq, 256)) at
   ``--positions`` (131072), stock vs converted, each built as 0.3's Trainer builds a model: ``build()`` on meta,
   ``to_empty``, ``init_weights``. (a1) the whole model, ``to_empty(device="meta")``: no memory is allocated;
   storages are counted by their storage objects (meta tensors all have data_ptr 0) and bytes are the storages'
   ``nbytes``: exact, nothing extrapolated. (a2) the same configs cut to 2 layers and a 256-token vocabulary
   (the RoPE configs untouched), materialized on the CPU and counted by ``data_ptr``; extrapolated to the
   full depth as stock = per-layer bytes x layers, converted = the one storage, and checked against (a1).
   Stock Llama-3-8B keeps its flavor's RoPE (Llama 3.1 scaling, 131072 positions); converted takes the same
   values through the section (rope_type llama3), a bit-identical cache (checked). Qwen3-0.6B's flavor
   stops at 40960 positions: stock gets 0.3's own YaRN fields (factor 4 over 32768, the model card's) and
   ``max_seq_len`` 131072 by ``dataclasses.replace`` (what ``update_from_config`` does within the cap);
   converted: the section's YaRN x4 (transformers' numbers, attention factor in the cache).
   Per rank: FSDP2 does not shard buffers, TP replicates the cache, CP does not touch it, so a rank holds
   what one model holds; under PP a rank holds one cache per local stage (converted) instead of one per layer.
b. **Cache bytes after init on the GPU** (CUDA). The same four full models, one at a time: unique storages and
   ``torch.cuda.memory_allocated`` after ``init_weights`` minus the parameters' bytes (= the buffers: the RoPE
   caches are the models' only buffers). Also Qwen3-0.6B with parameters on the CPU and
   ``init_weights(buffer_device=cuda)`` (0.3's CPU-offload init): the caches' CUDA bytes.
c. **Peak memory of one training step at the longest sequence that fits** (CUDA). Qwen3-0.6B, whole flavor (28
   layers, vocabulary 151936, tied embeddings): the RoPE cache is 1 KiB per position per layer, a large share of
   what a long-sequence step holds per token once activations are checkpointed. Both copies are built as the
   Trainer builds them, with 0.3's full activation checkpointing (``FullAC``) and FlexAttention (the flavor's
   default, 0.3's compiled kernel), the cache sized for the sequence (stock: ``max_seq_len`` replaced, plain
   RoPE theta 1e6; converted: the section's ``rope_type = "default"``, the same bits, so both copies compute the
   same numbers; the first losses are compared). A step: one sequence of ``seq`` tokens packed from documents of
   ``--doc-len`` tokens (per-document positions and 0.3's own packed-document causal block mask, as the
   Trainer builds them), forward under bf16 autocast, 0.3's ``ChunkedLossWrapper`` (lm_head and cross-entropy
   per chunk of ``--loss-chunk`` tokens), backward, fused AdamW. Packed documents keep attention linear in
   ``seq``; memory does not depend on the mask. Sequence lengths double from ``--seq0``; at each, stock then
   converted alone on the GPU: build, a first step (compilation, AdamW state), then the measured step
   (``max_memory_allocated`` after ``reset_peak_memory_stats``). A ``torch.cuda.OutOfMemoryError`` marks that
   copy out at that length; the search stops when the converted copy no longer fits, at ``--max-seq``, or when
   the next length would not finish within ``--budget-s``.
d. **Step time, converted / stock** (CUDA): both copies side by side at ``--time-seq`` (default: half the
   longest length where stock fit, so two copies fit at once; halved again on an out-of-memory error), ``--rounds`` alternating rounds (order flipped
   each round) of ``--steps`` steps after a warm-up step each, CUDA events, medians; the ratio is stock step
   time / converted step time (converted tokens/s over stock's).

``--copies stock,converted,fused,fused_cacheless`` adds converted copies with ``rope_scaling.apply = "fused"`` (the
Triton apply reading the one cache) and ``"fused_cacheless"`` (no cache at all) to parts c and d; ``--seqs`` measures
part c at the lengths given instead of searching; ``--flex-kernels pinned`` fixes FlexAttention's kernels to the
ones 0.3's autotuning chose at 65536 (``PINNED_FLEX``), so long lengths are not autotuned one by one.

``--toy`` runs every part on the debug flavors (qwen3 debugmodel for c and d, causal SDPA on CPU: FlexAttention
has no CPU backward) at small lengths; ``--simulate-oom stock:256,converted:512`` raises
``torch.OutOfMemoryError`` in a step at or past those lengths, so the CPU test covers the out-of-memory path.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead03 import synchronize, time_steps, versions  # noqa: E402  (the house helpers of benchmarks/overhead03.py)

GIB = 2**30


# --------------------------------------------------------------------------- models


def _registry(model: str):
    from torchtitan.models import llama3, qwen3

    return {"llama3": llama3, "qwen3": qwen3}[model].model_registry


def _sections():
    from titan_rope_ext import RopeScaling

    return {
        # stock 0.3 llama3's own values (scaling = "llama"): the converted cache is stock's bit for bit
        "llama3": RopeScaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                              original_max_position_embeddings=8192),
        # Qwen3-0.6B's model card: YaRN x4 over its native 32768
        "qwen3": RopeScaling(rope_type="yarn", factor=4.0, original_max_position_embeddings=32768),
    }


def model_config(model: str, flavor: str, positions: int, converted: bool, *, layers: int | None = None,
                 vocab: int | None = None, section=None, attn: str = "flex"):
    """A 0.3 flavor's model config with every RoPE sized for ``positions``, stock or converted.

    ``layers`` / ``vocab`` cut the depth and the vocabulary (the RoPE configs are left as they are).
    """
    from titan_rope_ext.torchtitan03.models import scale_model

    config = _registry(model)(flavor, attn_backend="flex").model
    if attn == "sdpa":  # causal SDPA: the same attention for one document per row; CPU (flex has no CPU backward)
        from torchtitan.models.common.attention import ScaledDotProductAttention

        for layer in config.layers:
            layer.attention = dataclasses.replace(layer.attention, inner_attention=ScaledDotProductAttention.Config())
    if layers is not None:
        config.layers = config.layers[:layers]
    if vocab is not None:
        config = _with_vocab(config, vocab)
    if converted:
        scale_model(config, section if section is not None else _sections()[model], max_seq_len=positions,
                    model_name=model)
    else:
        for layer in config.layers:
            rope = layer.attention.rope
            if rope.max_seq_len < positions and model == "qwen3" and section is None:
                # past the flavor's 40960: 0.3's own YaRN fields, as the model card extends it
                rope = dataclasses.replace(rope, scaling="yarn", rope_factor=positions / 32768,
                                           original_seq_len=32768)
            layer.attention.rope = dataclasses.replace(rope, max_seq_len=positions)
    return config


def _with_vocab(config, vocab: int):
    return dataclasses.replace(
        config, vocab_size=vocab,
        tok_embeddings=dataclasses.replace(config.tok_embeddings, num_embeddings=vocab),
        lm_head=dataclasses.replace(config.lm_head, out_features=vocab))


def build(config, device, buffer_device=None, ac: bool = False):
    """As 0.3's Trainer: ``build()`` on meta, (activation checkpointing,) ``to_empty``, ``init_weights``."""
    with torch.device("meta"):
        model = config.build()
    if ac:
        from torchtitan.distributed.activation_checkpoint import FullAC

        FullAC.Config().build().apply(model)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=buffer_device)
    return model


def param_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def report(model) -> dict:
    from titan_rope_ext.torchtitan03.cache_share import rope_cache_report

    return rope_cache_report(model)


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- part a: meta and CPU


def part_a(opts, log) -> dict:
    models = {"llama3": "debugmodel" if opts.toy else "8B", "qwen3": "debugmodel" if opts.toy else "0.6B"}
    positions = opts.positions
    out = {"positions": positions, "method": (
        "a1: whole model on meta (build, to_empty(meta), init_weights), storages counted by storage object, bytes = "
        "storage nbytes; a2: 2 layers and a 256-token vocabulary materialized on the CPU (to_empty(cpu), "
        "init_weights), counted by data_ptr, extrapolated to the full depth (stock: per-layer bytes x layers; "
        "converted: its one storage)")}
    for model, flavor in models.items():
        row = {"flavor": flavor}
        for kind in ("stock", "converted"):
            config = model_config(model, flavor, positions, kind == "converted")
            meta = report(build(config, "meta"))
            small = build(model_config(model, flavor, positions, kind == "converted", layers=2, vocab=256), "cpu")
            cpu = report(small)
            layers = meta["rope_modules"]
            row[kind] = {
                "layers": layers, "meta": meta, "cpu_2_layers": cpu,
                "cpu_extrapolated_bytes": cpu["per_layer_bytes"] * (layers if kind == "stock" else 1),
                "layer0_cache": small.layers["0"].attention.rope.cache.clone() if model == "llama3" else None,
            }
            del small
            free()
        if model == "llama3":  # stock's values through the section: stock's cache bit for bit
            row["converted_cache_equals_stock"] = bool(torch.equal(row["stock"]["layer0_cache"],
                                                                   row["converted"]["layer0_cache"]))
        for kind in ("stock", "converted"):
            row[kind].pop("layer0_cache")
        row["stock_over_converted"] = row["stock"]["meta"]["bytes"] / row["converted"]["meta"]["bytes"]
        row["consistent"] = all(row[k]["meta"]["bytes"] == row[k]["cpu_extrapolated_bytes"]
                                and row[k]["meta"]["per_layer_bytes"] == row[k]["cpu_2_layers"]["per_layer_bytes"]
                                for k in ("stock", "converted"))
        out[model] = row
        log(f"a: {model} {flavor} at {positions} positions: stock {_gib(row['stock']['meta']['bytes'])} in "
            f"{row['stock']['meta']['unique_storages']} storages, converted {_gib(row['converted']['meta']['bytes'])}"
            f" in {row['converted']['meta']['unique_storages']}; CPU cross-check consistent: {row['consistent']}")
    return out


# --------------------------------------------------------------------------- part b: after init on the GPU


def part_b(opts, device, log) -> dict:
    models = {"llama3": "debugmodel" if opts.toy else "8B", "qwen3": "debugmodel" if opts.toy else "0.6B"}
    out = {"positions": opts.positions}
    for model, flavor in models.items():
        row = {"flavor": flavor}
        for kind in ("stock", "converted"):
            config = model_config(model, flavor, opts.positions, kind == "converted")
            free()
            before = _allocated(device)
            built = build(config, device)
            synchronize(device)
            after = _allocated(device)
            row[kind] = {"report": report(built), "params_bytes": param_bytes(built),
                         "allocated_minus_params_bytes": None if after is None else after - before - param_bytes(built)}
            del built
            free()
        out[model] = row
        log(f"b: {model}: " + ", ".join(f"{k} {row[k]['report']['unique_storages']} storage(s) "
                                         f"{_gib(row[k]['report']['bytes'])} (allocator: "
                                         f"{_gib(row[k]['allocated_minus_params_bytes'])})"
                                         for k in ("stock", "converted")))
    # parameters on the CPU, caches on the device: 0.3's init with training.enable_cpu_offload
    flavor = models["qwen3"]
    row = {"flavor": flavor, "params_device": "cpu", "buffer_device": str(device)}
    for kind in ("stock", "converted"):
        config = model_config("qwen3", flavor, opts.positions, kind == "converted")
        free()
        before = _allocated(device)
        built = build(config, "cpu", buffer_device=device)
        synchronize(device)
        after = _allocated(device)
        row[kind] = {"report": report(built), "device_allocated_bytes": None if after is None else after - before}
        del built
        free()
    out["qwen3_buffer_device"] = row
    log(f"b: qwen3 params on cpu, init_weights(buffer_device={device}): " + ", ".join(
        f"{k} {row[k]['report']['unique_storages']} storage(s) on {row[k]['report']['device']}, "
        f"device bytes {_gib(row[k]['device_allocated_bytes'])}" for k in ("stock", "converted")))
    return out


def _allocated(device) -> int | None:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def _gib(nbytes) -> str:
    if nbytes is None:
        return "n/a"
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= size:
            return f"{nbytes / size:.3f} {unit}"
    return f"{nbytes} B"


# --------------------------------------------------------------------------- parts c and d: a training step

COPIES = {"stock": None, "converted": "torchtitan", "fused": "fused", "fused_cacheless": "fused_cacheless"}
"""``--copies`` names: stock 0.3, or converted with this ``rope_scaling.apply`` (one cache per model; the fused
Triton apply reading it; the cacheless apply, no cache at all)."""

PINNED_FLEX = (r"(BLOCK_M=128, BLOCK_N=64|BLOCK_M1=64, BLOCK_M2=128, BLOCK_N1=128, BLOCK_N2=64), "
               r".*num_stages=3, num_warps=8$")
"""``--flex-kernels pinned``: the forward and backward FlexAttention kernels that 0.3's own autotuning chose for this
step at seq 65536 on the H200 (benchmarks/results/rope_memory03_h200.txt), as a regex over inductor's choice
descriptions: one choice left, so no length is autotuned (each new length otherwise benchmarks 20 kernels, minutes
at 256K tokens). Both copies run the same kernels either way."""



class Copy:
    """One model (stock or converted) ready to train at ``seq``: model, chunked loss, optimizer, batch."""

    def __init__(self, name: str, opts, seq: int, device):
        from torchtitan.components.loss import ChunkedLossWrapper

        from titan_rope_ext import RopeScaling

        self.name, self.seq, self.device, self.opts = name, seq, device, opts
        config = model_config("qwen3", opts.step_flavor, seq, name != "stock",
                              section=RopeScaling(rope_type="default", apply=COPIES[name] or "torchtitan"), attn=opts.attn)
        torch.manual_seed(0)  # both copies start from the same weights
        self.model = build(config, device, ac=True).train()
        self.model._skip_lm_head = True  # as the Trainer does for ChunkedLossWrapper
        self.loss_fn = ChunkedLossWrapper.Config(num_chunks=max(1, seq // opts.loss_chunk)).build()
        self.loss_fn.set_lm_head(self.model.lm_head)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-5, fused=device.type == "cuda")
        gen = torch.Generator().manual_seed(1)
        vocab = config.vocab_size
        self.tokens = torch.randint(0, vocab, (1, seq), generator=gen).to(device)
        self.labels = torch.randint(0, vocab, (1, seq), generator=gen).to(device)
        self.positions = (torch.arange(seq) % opts.doc_len).unsqueeze(0).to(device)  # packed documents
        self.masks = self.model.get_attention_masks(positions=self.positions) if opts.attn == "flex" else None
        self.ntok = torch.tensor(float(seq), device=device)
        self.rope = report(self.model)

    def step(self) -> float:
        limit = self.opts.simulate_oom.get(self.name)
        if limit is not None and self.seq >= limit:
            raise torch.OutOfMemoryError(f"simulated: {self.name} at {self.seq} (--simulate-oom)")
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            hidden = self.model(self.tokens, positions=self.positions, attention_masks=self.masks)
            loss, _ = self.loss_fn(hidden, self.labels, self.ntok)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


def measure_alone(name: str, opts, seq: int, device) -> dict:
    """Build one copy at ``seq`` alone on the device, a first step, then the measured step."""
    free()
    began = time.perf_counter()
    result = {"fits": False}
    oom = None
    try:
        copy = Copy(name, opts, seq, device)
        result["rope"] = copy.rope
        first = copy.step()
        synchronize(device)
        result["first_loss"] = float(first)
        resident = _allocated(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        copy.step()
        synchronize(device)
        result.update(fits=True, step_s=round(time.perf_counter() - t0, 3), resident_bytes=resident,
                      peak_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                      peak_reserved_bytes=torch.cuda.max_memory_reserved(device) if device.type == "cuda" else None)
    except Exception as err:  # noqa: BLE001 -- out of memory only; anything else is re-raised
        if not _is_oom(err):
            raise
        oom = f"{type(err).__name__}: {str(err)[:300]}"
    copy = None  # the traceback is gone: drop the model, its activations and its optimizer state
    free()
    if oom is not None:
        result["oom"] = oom
    result["wall_s"] = round(time.perf_counter() - began, 1)
    return result


def _is_oom(err: BaseException) -> bool:
    """``torch.OutOfMemoryError`` (= ``torch.cuda.OutOfMemoryError``), also when a compiler wrapped it (e.g. while
    FlexAttention's backward kernel is compiled and autotuned inside the first backward)."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, torch.OutOfMemoryError) or "CUDA out of memory" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def part_c(opts, device, log, began: float, save) -> dict:
    out = {"model": f"qwen3 {opts.step_flavor}, FullAC, {opts.attn}, documents of {opts.doc_len} tokens, "
                    f"ChunkedLossWrapper chunks of {opts.loss_chunk} tokens, bf16 autocast, fused AdamW",
           "flex_kernels": opts.flex_kernels if opts.attn == "flex" else None,
           "copies": {name: COPIES[name] for name in opts.copies},
           "device_memory_bytes": (torch.cuda.get_device_properties(device).total_memory
                                   if device.type == "cuda" else None),
           "by_seq": {}}

    def measure(seq: int, note: str = "") -> dict:
        row = {name: measure_alone(name, opts, seq, device) for name in opts.copies}
        out["by_seq"][str(seq)] = row
        log(f"c: seq {seq}{note}: " + "; ".join(
            f"{n} " + (f"peak {_gib(r.get('peak_bytes'))}, rope {_gib(r['rope']['bytes'])}, step {r['step_s']} s"
                       if r["fits"] else "out of memory") for n, r in row.items()))
        save()
        return row

    def over_budget(seq: int) -> bool:
        predicted = _predict(out, seq)
        if time.perf_counter() - began + predicted > opts.budget_s:
            out["stopped"] = f"time budget: {seq} would take about {predicted:.0f} s more"
            return True
        return False

    if opts.seqs:  # the lengths given, nothing searched
        for seq in opts.seqs:
            if over_budget(seq):
                break
            measure(seq)
        else:
            out["stopped"] = "--seqs done"
    else:
        seq = opts.seq0
        while seq <= opts.max_seq and not over_budget(seq):
            if not measure(seq)["converted"]["fits"]:
                out["stopped"] = f"converted does not fit at {seq}"
                break
            seq *= 2
        else:
            out.setdefault("stopped", f"--max-seq {opts.max_seq}")
        # --bisect: lengths between the longest where converted fit and the first where it did not
        low, high = _bounds(out, "converted")
        for _ in range(opts.bisect if high is not None else 0):
            seq = (low + high) // 2 // opts.granule * opts.granule
            if seq in (low, high) or over_budget(seq):
                break
            low, high = (seq, high) if measure(seq, " (bisect)")["converted"]["fits"] else (low, seq)
    out["by_seq"] = dict(sorted(out["by_seq"].items(), key=lambda item: int(item[0])))
    fits = {name: [int(s) for s, r in out["by_seq"].items() if r[name]["fits"]] for name in opts.copies}
    out["longest_fit"] = {name: max(v) if v else None for name, v in fits.items()}
    common = [s for s in fits["stock"] if all(s in v for v in fits.values())]
    if common:
        s = str(max(common))
        row = out["by_seq"][s]
        stock = row["stock"]
        out["at_longest_all_fit"] = {
            "seq": int(s), "peak_bytes": {n: r["peak_bytes"] for n, r in row.items()},
            "rope_bytes": {n: r["rope"]["bytes"] for n, r in row.items()},
            "peak_saved_bytes": {n: (stock["peak_bytes"] - r["peak_bytes"]) if stock["peak_bytes"] is not None
                                 else None for n, r in row.items() if n != "stock"},
            "first_loss_equal": {n: stock["first_loss"] == r["first_loss"] for n, r in row.items() if n != "stock"}}
    return out


def _predict(out: dict, seq: int) -> float:
    """Seconds that measuring every copy at ``seq`` should take: two steps each, a step's time linear in the
    length (attention over packed documents is), from the slowest copy at the longest length where one fit; plus
    building and the first call's compilation."""
    timed = [(int(s), max(r[n]["step_s"] for n in r if r[n]["fits"])) for s, r in out["by_seq"].items()
             if any(x["fits"] for x in r.values())]
    if not timed:
        return 0.0
    at, slowest = max(timed)
    return 2 * 1.1 * slowest * len(out["copies"]) * seq / at + 20


def _bounds(out: dict, name: str) -> tuple[int | None, int | None]:
    """The longest length where ``name`` fit and the shortest longer one where it did not."""
    rows = sorted((int(s), r[name]["fits"]) for s, r in out["by_seq"].items())
    low = max((s for s, fit in rows if fit), default=None)
    high = min((s for s, fit in rows if not fit and (low is None or s > low)), default=None)
    return low, high


def part_d(opts, device, seq: int, log) -> dict:
    free()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    copies = {name: Copy(name, opts, seq, device) for name in opts.copies}
    firsts = {name: float(c.step()) for name, c in copies.items()}  # warm-up (compiled at this length in part c)
    for c in copies.values():
        c.step()
    synchronize(device)
    per_step = {name: [] for name in copies}
    for r in range(opts.rounds):
        order = list(copies) if r % 2 == 0 else list(reversed(copies))
        for name in order:
            per_step[name].append(time_steps(copies[name].step, opts.steps, device))
    med = {k: statistics.median(v) for k, v in per_step.items()}
    others = [name for name in copies if name != "stock"]
    out = {"seq": seq, "rounds": opts.rounds, "steps_per_round": opts.steps,
           "step_ms_median": {k: round(1000 * v, 3) for k, v in med.items()},
           "step_ms_per_round": {k: [round(1000 * t, 3) for t in v] for k, v in per_step.items()},
           "ratio_over_stock_tokens_per_s": {n: med["stock"] / med[n] for n in others},
           "ratio_converted_over_stock_tokens_per_s": med["stock"] / med["converted"],
           "first_loss_equal": all(firsts["stock"] == firsts[n] for n in others),
           "first_loss": firsts,
           "rope_bytes": {k: c.rope["bytes"] for k, c in copies.items()},
           "all_resident_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}
    log(f"d: seq {seq}: step ms median {out['step_ms_median']}; tokens/s over stock's "
        + ", ".join(f"{n} {v:.4f}" for n, v in out["ratio_over_stock_tokens_per_s"].items()))
    copies = None
    free()
    return out


# --------------------------------------------------------------------------- main


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--toy", action="store_true", help="debug flavors, small lengths, every part (the CPU test)")
    p.add_argument("--positions", type=int, default=None, help="cache length of parts a and b (default 131072)")
    p.add_argument("--parts", default=None, help="comma list of a,b,c,d (default: a on CPU, all on CUDA)")
    p.add_argument("--seq0", type=int, default=None, help="first length of the search (default 65536)")
    p.add_argument("--max-seq", type=int, default=None, help="last length tried (default 2**21)")
    p.add_argument("--budget-s", type=float, default=240.0, help="stop the search when the next length would "
                   "end past this many seconds from the start")
    p.add_argument("--doc-len", type=int, default=None, help="tokens per packed document (default 8192)")
    p.add_argument("--loss-chunk", type=int, default=None, help="tokens per ChunkedLossWrapper chunk (default 4096)")
    p.add_argument("--bisect", type=int, default=1, help="after the doubling, this many bisection steps between "
                   "the longest length where converted fit and the first where it did not (budget permitting)")
    p.add_argument("--time-seq", type=int, default=None,
                   help="length of part d (default: half the longest length where stock fit)")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--steps", type=int, default=1, help="timed steps per round and copy")
    p.add_argument("--attn", default=None, choices=["flex", "sdpa"],
                   help="inner attention of parts c, d (default: flex on CUDA, causal SDPA on CPU)")
    p.add_argument("--simulate-oom", default="", help="test hook: 'stock:256,converted:512' raises "
                   "torch.OutOfMemoryError in a step of that copy at or past that length")
    p.add_argument("--copies", default="stock,converted",
                   help=f"comma list of the copies parts c and d build, from {', '.join(COPIES)}; stock and "
                        "converted always (converted drives the search)")
    p.add_argument("--seqs", default=None, help="part c at these lengths only (comma list), no search")
    p.add_argument("--flex-kernels", default="autotune", choices=["autotune", "pinned"],
                   help="FlexAttention kernels: 0.3's own autotuning at every new length, or pinned (PINNED_FLEX)")
    p.add_argument("--out", default=None)
    opts = p.parse_args(argv)
    opts.copies = list(dict.fromkeys(opts.copies.split(",")))
    unknown = [c for c in opts.copies if c not in COPIES]
    if unknown or not {"stock", "converted"} <= set(opts.copies):
        p.error(f"--copies {','.join(opts.copies)}: must list stock and converted, from {', '.join(COPIES)}")
    opts.seqs = [int(x) for x in opts.seqs.split(",")] if opts.seqs else None
    opts.device = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
    toy = opts.toy
    defaults = dict(positions=512 if toy else 131072, seq0=64 if toy else 65536, max_seq=1024 if toy else 2**21,
                    doc_len=32 if toy else 8192, loss_chunk=32 if toy else 4096)
    for key, value in defaults.items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.attn = opts.attn or ("flex" if opts.device == "cuda" else "sdpa")
    opts.granule = math.lcm(opts.doc_len, opts.loss_chunk)  # lengths stay whole documents and whole loss chunks
    opts.step_flavor = "debugmodel" if toy else "0.6B"
    if opts.parts is None:
        opts.parts = "a,b,c,d" if (opts.device == "cuda" or toy) else "a"
    opts.parts = set(opts.parts.split(","))
    opts.simulate_oom = {k: int(v) for k, v in (item.split(":") for item in opts.simulate_oom.split(",") if item)}
    return opts


def main(argv=None) -> int:
    opts = parse(argv)
    device = torch.device(opts.device)
    began = time.perf_counter()

    def log(text: str) -> None:
        print(f"[rope_memory03 {time.perf_counter() - began:7.1f}s] {text}", flush=True)

    report_ = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.machine()})",
        "versions": versions(), "command": " ".join(sys.argv),
        "args": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(opts).items()},
    }

    def save() -> None:
        if opts.out:
            Path(opts.out).write_text(json.dumps(report_, indent=1))

    log(f"{report_['device']}; {report_['versions']}; parts {sorted(opts.parts)}")
    if opts.flex_kernels == "pinned":
        import torch._inductor.config as inductor_config

        inductor_config.test_configs.autotune_choice_desc_regex = PINNED_FLEX
    failed = []

    def run(key: str, fn) -> None:
        # one part failing (a one-shot GPU run) leaves the others' numbers and the traceback in the JSON
        try:
            report_[key] = fn()
        except Exception:  # noqa: BLE001
            failed.append(key)
            report_[key] = {"error": traceback.format_exc()[-4000:]}
            log(f"{key} FAILED:\n{report_[key]['error']}")
        save()

    if "a" in opts.parts:
        run("a_meta_cpu", lambda: part_a(opts, log))
    if device.type == "cuda" or opts.toy:
        if "b" in opts.parts:
            run("b_after_init", lambda: part_b(opts, device, log))
        if "c" in opts.parts:
            run("c_peak", lambda: part_c(opts, device, log, began, save))
        if "d" in opts.parts:
            run("d_step_time", lambda: part_d_fitting(opts, device, report_.get("c_peak", {}), log))
    else:
        log("parts b, c, d need CUDA (or --toy on CPU)")
    report_["total_s"] = round(time.perf_counter() - began, 1)
    report_["failed_parts"] = failed
    save()
    _print_tables(report_)
    return 1 if failed else 0


def part_d_fitting(opts, device, c_peak: dict, log) -> dict:
    """Part d at ``--time-seq``, or half the longest length where stock fit alone; halved once more if two
    copies do not fit side by side there."""
    longest = c_peak.get("longest_fit", {}).get("stock")
    seq = opts.time_seq or (max(opts.seq0, longest // 2) if longest else opts.seq0)
    try:
        return part_d(opts, device, seq, log)
    except Exception as err:  # noqa: BLE001
        if not _is_oom(err) or seq // 2 < opts.granule:
            raise
        note = f"out of memory with both copies at {seq}: {str(err)[:200]}"
    free()
    log(f"d: {note}; again at {seq // 2 // opts.granule * opts.granule}")
    out = part_d(opts, device, seq // 2 // opts.granule * opts.granule, log)
    out["note"] = note
    return out


def _print_tables(r: dict) -> None:
    r = {k: v for k, v in r.items() if not (isinstance(v, dict) and "error" in v)}
    if "a_meta_cpu" in r:
        a = r["a_meta_cpu"]
        print(f"\nRoPE cache per rank at {a['positions']} positions (a: meta, whole model; CPU 2-layer cross-check)")
        print(f"{'model':14s} {'stock':>22s} {'converted':>22s} {'stock/conv':>10s}")
        for model in ("llama3", "qwen3"):
            row = a[model]
            cells = [f"{_gib(row[k]['meta']['bytes'])} in {row[k]['meta']['unique_storages']}"
                     for k in ("stock", "converted")]
            print(f"{model + ' ' + row['flavor']:14s} {cells[0]:>22s} {cells[1]:>22s} {row['stock_over_converted']:10.1f}")
    if "c_peak" in r:
        c = r["c_peak"]
        print(f"\nPeak of one training step (c: {c['model']})")
        for seq, row in c["by_seq"].items():
            print(f"  seq {int(seq):>8d}: " + "  ".join(
                f"{n} " + (f"{_gib(x.get('peak_bytes'))} (rope {_gib(x['rope']['bytes'])})" if x["fits"] else "OOM")
                for n, x in row.items()))
        print(f"  longest fit: {c['longest_fit']}; stopped: {c.get('stopped')}")
    if "d_step_time" in r:
        d = r["d_step_time"]
        ratios = ", ".join(f"{n} {v:.4f}" + ("" if math.isfinite(v) else " (not finite)")
                           for n, v in d["ratio_over_stock_tokens_per_s"].items())
        print(f"\nStep time at seq {d['seq']} (d): tokens/s over stock's: {ratios}; medians ms {d['step_ms_median']}")


if __name__ == "__main__":
    sys.exit(main())
