"""The converter under torchtitan's parallelisms: real ``torchrun -m torchtitan.train`` runs, compared.

Usage (repo root, torchtitan 0.2.2 importable, 4 GPUs)::

    python -m tests.torchtitan02.gpu.parallel_runs --out outputs/parallel [--steps 30] [--jobs 8] [--only REGEX]

What it runs, each through torchtitan's own entry point with our TOMLs (``configs/``):

* a seed checkpoint per model (``--checkpoint.create_seed_checkpoint``, converter on), which every
  other run starts from (``--checkpoint.initial_load_path``), so all runs share one initialization;
* per parallel layout (``LAYOUTS``: single GPU, FSDP 4, HSDP 2x2, TP 2 + FSDP 2, CP 2 + FSDP 2 with
  SDPA and flex, PP 2 + FSDP 2 with 1F1B and Interleaved1F1B, compile, full and selective AC,
  float8): llama3 as stock torchtitan (converter off), with the stock-equivalent section
  (``configs/llama3_debug_llama3.toml``) and with YaRN (``configs/llama3_debug_yarn.toml``); qwen3
  stock and YaRN on a subset;
* DCP resume: a run saves at step 10 under FSDP 4, and runs resume it to step 20 under FSDP 4 and
  under TP 2 + FSDP 2, with the converter on and off.

All runs train in float32 (``--training.mixed_precision_param float32``; float8 runs excepted) with
``--debug.deterministic``, on a corpus whose every sample is the same ``seq_len + 1`` tokens, so that
a batch holds the same data whatever the data-parallel degree (torchtitan's loader gives each DP rank
its own shard of a real corpus, which would make the single-GPU control see other samples). The
``rope_probe`` converter (``tests/torchtitan02/gpu/rope_probe.py``) logs a digest of every rank's rotary cache.

``check(results)`` turns the logs into pass/fail rows (see its docstring for the criteria);
``results.json`` and ``results.md`` land in ``--out``. ``tests/torchtitan02/gpu/test_parallel.py`` runs this
under pytest (skipped without 4 GPUs); ``test_parallel_matrix`` on CPU checks that every command
line parses.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
STEP_RE = re.compile(r"step:\s*(\d+)\s+loss:\s*([-\d.naninf]+)")
ERROR_RE = re.compile(r"\b\w+Error: .*")
RANK_RE = re.compile(r"\[rank(\d+)\]:(.*)")
PROBE_RE = re.compile(r"rope_probe: rank=(\d+) part=(\d+) buffer=(\w+) shape=(\([\d, ]*\)) dtype=(\w+) digest=(\w+)")
ROPE_KEYS = ("freqs_cis", "rope_cache")

TOML = {
    ("llama3", "stock"): "configs/llama3_debug_llama3.toml",  # without its [rope_scaling] section: see toml_for
    ("llama3", "equiv"): "configs/llama3_debug_llama3.toml",  # llama3 method, 8 / 1 / 4 / 8192: stock's values
    ("llama3", "yarn"): "configs/llama3_debug_yarn.toml",
    ("qwen3", "stock"): "configs/qwen3_debug_yarn.toml",
    ("qwen3", "yarn"): "configs/qwen3_debug_yarn.toml",
}
GLOBAL_BATCH = 8
SEQ_LEN = 256

PP = "--parallelism.pipeline_parallel_degree"
PP_SCHEDULE = "--parallelism.pipeline_parallel_schedule"


@dataclasses.dataclass(frozen=True)
class Layout:
    ngpu: int
    dp: int  # data-parallel degree (replicate x shard): local batch = GLOBAL_BATCH / dp
    args: tuple[str, ...] = ()
    baseline: str = "single"  # the single-GPU layout it is compared with
    models: tuple[str, ...] = ("llama3",)
    float32: bool = True  # False: torchtitan's default bf16 mixed precision
    deterministic: bool = True  # --debug.deterministic
    stock_fails: tuple[str, ...] = ()  # models that stock torchtitan 0.2.2 cannot run here (why: ``why``)
    why: str = ""


FLEX = ("--model.flavor", "debugmodel_flex_attn")
TP = "--parallelism.tensor_parallel_degree", "2"
CP = "--parallelism.context_parallel_degree", "2"
SDPA_MATH_DTENSOR = (
    "in float32, SDPA has only its math kernel, whose ops fail on DTensor inputs under torchtitan 0.2.2's CP "
    "('aten.add.Tensor got mixed torch.Tensor and DTensor') and, with GQA (qwen3), under TP ('Attempted to "
    "flatten multiple dimensions, with dimension 1 being sharded'); llama3 TP (no GQA in SDPA) is unaffected")
LAYOUTS: dict[str, Layout] = {
    "single": Layout(1, 1, models=("llama3", "qwen3")),
    "single_flex": Layout(1, 1, FLEX, baseline="single_flex"),
    "fsdp4": Layout(4, 4, models=("llama3", "qwen3")),
    "hsdp2x2": Layout(4, 4, ("--parallelism.data_parallel_replicate_degree", "2",
                             "--parallelism.data_parallel_shard_degree", "2")),
    "tp2_fsdp2": Layout(4, 2, TP, models=("llama3", "qwen3"), stock_fails=("qwen3",), why=SDPA_MATH_DTENSOR),
    "cp2_fsdp2": Layout(4, 2, CP, models=("llama3", "qwen3"), stock_fails=("llama3", "qwen3"), why=SDPA_MATH_DTENSOR),
    "cp2_fsdp2_flex": Layout(4, 2, (*CP, *FLEX), baseline="single_flex"),
    # bf16: SDPA's flash / cuDNN kernels, which do not decompose into DTensor ops (not deterministic)
    "single_bf16": Layout(1, 1, baseline="single_bf16", models=("llama3", "qwen3"), float32=False, deterministic=False),
    "tp2_fsdp2_bf16": Layout(4, 2, TP, baseline="single_bf16", models=("qwen3",), float32=False, deterministic=False),
    "cp2_fsdp2_bf16": Layout(4, 2, CP, baseline="single_bf16", models=("llama3", "qwen3"), float32=False,
                             deterministic=False),
    "pp2_fsdp2_1f1b": Layout(4, 2, (PP, "2", PP_SCHEDULE, "1F1B"), models=("llama3", "qwen3"),
                             stock_fails=("qwen3",), why="torchtitan 0.2.2's qwen3 has no pipelining function: "
                                         "'Pipeline Parallel is enabled but qwen3 does not support pipelining'"),
    "pp2_fsdp2_interleaved": Layout(4, 2, (PP, "2", PP_SCHEDULE, "Interleaved1F1B")),
    "fsdp4_compile": Layout(4, 4, ("--compile.enable",), models=("llama3", "qwen3")),
    "fsdp4_ac_full": Layout(4, 4, ("--activation_checkpoint.mode", "full")),
    "fsdp4_ac_selective_op": Layout(4, 4, ("--activation_checkpoint.mode", "selective",
                                           "--activation_checkpoint.selective_ac_option", "op")),
    "fsdp4_ac_selective_layer": Layout(4, 4, ("--activation_checkpoint.mode", "selective",
                                              "--activation_checkpoint.selective_ac_option", "2")),
    # float8 needs bf16 compute (it is compared with stock float8 and with the single-GPU run loosely)
    "fsdp4_float8_compile": Layout(4, 4, ("--compile.enable",), float32=False),
}
ROPES = {"llama3": ("stock", "equiv", "yarn"), "qwen3": ("stock", "yarn")}


@dataclasses.dataclass
class Run:
    name: str
    model: str
    rope: str  # stock (converter off) | equiv | yarn
    layout: str  # a LAYOUTS key, or "seed" / "resume..." for the checkpoint runs
    ngpu: int
    args: list[str]
    after: str | None = None  # a run whose checkpoint this one needs
    copy_checkpoint: str | None = None  # "<run>:<step>": its step-N checkpoint seeds this run's folder


def without_rope_section(text: str) -> str:
    """A job file's text without its ``[rope_scaling]`` section (a section whose converter is off is refused)."""
    return re.sub(r"(?ms)^\[rope_scaling\]\n.*?(?=^\[|\Z)", "", text)


def toml_for(out: Path, model: str, rope: str) -> str:
    """The job file of a run: the shipped config, or for stock runs a copy without the section in ``out``."""
    src = TOML[(model, rope)]
    if rope != "stock":
        return src
    path = out / f"{model}_stock.toml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(without_rope_section((REPO / src).read_text()))
    return str(path)


def converters(model: str, rope: str, float8: bool = False) -> list[str]:
    names = ([] if rope == "stock" else ["rope_scaling"]) + (["quantize.linear.float8"] if float8 else []) + ["rope_probe"]
    return ["--model.converters", ",".join(names)]  # torchtitan splits lists on commas


def common_args(out: Path, name: str, steps: int, deterministic: bool = True) -> list[str]:
    return [
        "--job.dump_folder", str(out / "runs" / name),
        "--experimental.custom_import", "tests.torchtitan02.gpu.rope_probe",
        "--training.steps", str(steps), "--training.seq_len", str(SEQ_LEN),
        "--training.dataset_path", str(out / "parity_corpus"),
        *(["--debug.deterministic"] if deterministic else []), "--debug.seed", "0",
        "--metrics.log_freq", "1", "--lr_scheduler.warmup_steps", "2", "--lr_scheduler.decay_ratio", "0.0",
        "--activation_checkpoint.mode", "none",  # layouts that test AC turn it on again (later flags win)
    ]


def plan(out: Path, steps: int) -> list[Run]:
    runs: list[Run] = []
    for model in ROPES:
        # the seed checkpoint: one rank, converter on; every run below loads it
        runs.append(Run(f"{model}_seed", model, "yarn", "seed", 1, [
            "--job.config_file", TOML[(model, "yarn")], *common_args(out, f"{model}_seed", 1),
            *converters(model, "yarn"), "--checkpoint.enable", "--checkpoint.create_seed_checkpoint",
            "--parallelism.data_parallel_shard_degree", "1"]))
    for layout_name, layout in LAYOUTS.items():
        for model in layout.models:
            for rope in ROPES[model]:
                name = f"{model}_{rope}_{layout_name}"
                float8 = "float8" in layout_name
                args = ["--job.config_file", toml_for(out, model, rope), *common_args(out, name, steps, layout.deterministic),
                        *converters(model, rope, float8),
                        "--training.local_batch_size", str(GLOBAL_BATCH // layout.dp),
                        "--checkpoint.enable", "--checkpoint.load_only",
                        "--checkpoint.initial_load_path", str(out / "runs" / f"{model}_seed" / "checkpoint" / "step-0"),
                        *(["--training.mixed_precision_param", "float32"] if layout.float32 else []),
                        *layout.args]
                runs.append(Run(name, model, rope, layout_name, layout.ngpu, args, after=f"{model}_seed"))
    # DCP resume across parallelism: save at 10 under FSDP 4, resume to 20 under FSDP 4 / TP 2 + FSDP 2
    for rope in ("equiv", "yarn"):
        save = f"llama3_{rope}_save10"
        base = ["--job.config_file", TOML[("llama3", rope)], "--training.mixed_precision_param", "float32"]
        runs.append(Run(save, "llama3", rope, "save10", 4, [
            *base, *common_args(out, save, 10), *converters("llama3", rope), "--training.local_batch_size", "2",
            "--checkpoint.enable", "--checkpoint.interval", "10", "--checkpoint.no_last_save_model_only",
            "--checkpoint.initial_load_path", str(out / "runs" / "llama3_seed" / "checkpoint" / "step-0")],
            after="llama3_seed"))
        # torchtitan 0.2.2 cannot reshard the dataloader state to another DP degree ("dataloader
        # resharding is not supported yet"), so the TP 2 + FSDP 2 loaders skip it; every sample of
        # the parity corpus is the same, so the data position does not matter
        to_tp = ["--parallelism.tensor_parallel_degree", "2", "--checkpoint.exclude_from_loading", "dataloader"]
        loaders = [("fsdp4", rope, 2, []), ("tp2_fsdp2", rope, 4, to_tp)]
        if rope == "equiv":  # the same checkpoint loaded by stock torchtitan
            loaders.append(("tp2_fsdp2", "stock", 4, to_tp))
        for layout_name, load_rope, local, extra in loaders:
            name = f"llama3_{rope}_resume_{layout_name}_{load_rope}"
            load_base = ["--job.config_file", toml_for(out, "llama3", load_rope), *base[2:]]
            runs.append(Run(name, "llama3", load_rope, f"resume_{layout_name}", 4, [
                *load_base, *common_args(out, name, 20), *converters("llama3", load_rope),
                "--training.local_batch_size", str(local), "--checkpoint.enable", "--checkpoint.load_only", *extra],
                after=save, copy_checkpoint=f"{save}:10"))
    return runs


# --------------------------------------------------------------------------------------------- data


def parity_corpus(folder: Path, tokenizer_path: str, seq_len: int = SEQ_LEN, copies: int = 64) -> str:
    """Writes ``folder/train.jsonl``: ``copies`` times one document that tokenizes (with BOS and EOS, as
    torchtitan's loader encodes it) to exactly ``seq_len + 1`` tokens, i.e. one training sample.

    torchtitan's loader cuts its token stream into windows of ``seq_len + 1``; with this corpus every
    window, on every data-parallel rank, is the same sample.
    """
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    from titan_rope_ext.assets.make_assets import write_corpus

    tokenizer = HuggingFaceTokenizer(tokenizer_path)
    words = []
    for line in (REPO / "titan_rope_ext/assets/corpus/train.jsonl").read_text().splitlines()[:50]:
        words += json.loads(line)["text"].split()
    target = seq_len + 1

    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_bos=True, add_eos=True))

    text = ""
    for word in words:
        longer = f"{text} {word}" if text else word
        if count(longer) > target:
            break
        text = longer
    for filler in ["a", "e", "s", "t", "0", "1", "x"] * target:  # pad one short token at a time
        if count(text) == target:
            break
        if count(f"{text} {filler}") <= target:
            text = f"{text} {filler}"
    if count(text) != target:
        raise RuntimeError(f"could not build a {target}-token document (got {count(text)})")
    write_corpus(folder, [text] * copies)
    return text


# ------------------------------------------------------------------------------------------ running


def command(run: Run, cpu: bool) -> list[str]:
    entry = ["-m", "titan_rope_ext.torchtitan02.launch.worker"] if cpu else ["-m", "torchtitan.train"]
    # --tee 3 with TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE (set in execute) prefixes every line with its rank
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(run.ngpu),
            "--tee", "3", *entry, *run.args]


def execute(run: Run, out: Path, cpu: bool, timeout: int, gpu_slot: int | None) -> dict:
    shutil.rmtree(out / "runs" / run.name, ignore_errors=True)  # a leftover checkpoint would be resumed
    if run.copy_checkpoint:
        source, step = run.copy_checkpoint.split(":")
        target = out / "runs" / run.name / "checkpoint" / f"step-{step}"
        shutil.copytree(out / "runs" / source / "checkpoint" / f"step-{step}", target)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
               TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE="[rank${rank}]:")
    if cpu:
        env["TITAN_ROPE_CPU_WORKER"] = "1"
    elif run.ngpu == 1 and gpu_slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu_slot)
    start = time.time()
    log = out / "logs" / f"{run.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        try:
            rc = subprocess.run(command(run, cpu), cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    text = log.read_text(errors="replace")
    per_rank: dict[int, list[str]] = {}
    for line in text.splitlines():
        if m := RANK_RE.match(line):
            per_rank.setdefault(int(m.group(1)), []).append(m.group(2))
    losses_by_rank = {r: {int(s): float(v) for s, v in STEP_RE.findall("\n".join(lines))}
                      for r, lines in per_rank.items()}
    # every rank logs the global loss, except under PP, where only the last stage (the last ranks) has it
    losses = losses_by_rank.get(run.ngpu - 1) or {}
    probes = sorted({m for m in PROBE_RE.findall(text)})
    errors = [m.group(0) for m in ERROR_RE.finditer(text) if "ChildFailedError" not in m.group(0)]
    return {"name": run.name, "model": run.model, "rope": run.rope, "layout": run.layout, "ngpu": run.ngpu,
            "rc": rc, "seconds": round(time.time() - start, 1), "losses": losses,
            "probes": [dict(zip(("rank", "part", "buffer", "shape", "dtype", "digest"), p)) for p in probes],
            "command": " ".join(["torchrun", "--nproc-per-node", str(run.ngpu), "-m", "torchtitan.train", *run.args]),
            "error": "" if rc == 0 else "\n".join(text.splitlines()[-25:]),
            "error_line": errors[0] if errors and rc != 0 else ""}


def run_all(runs: list[Run], out: Path, jobs: int, cpu: bool, timeout: int, ngpus: int) -> dict[str, dict]:
    results: dict[str, dict] = {}
    pending = list(runs)
    slot = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        running: dict[concurrent.futures.Future, Run] = {}
        while pending or running:
            for run in [r for r in pending if r.after is None or r.after in results]:
                if len(running) >= jobs:
                    break
                if run.after is not None and results[run.after]["rc"] != 0:
                    results[run.name] = {"name": run.name, "rc": -1, "error": f"needs {run.after}, which failed",
                                         "losses": {}, "probes": [], "model": run.model, "rope": run.rope,
                                         "layout": run.layout, "ngpu": run.ngpu}
                    pending.remove(run)
                    continue
                pending.remove(run)
                running[pool.submit(execute, run, out, cpu, timeout, slot % max(ngpus, 1))] = run
                slot += run.ngpu == 1
            done, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                run = running.pop(future)
                results[run.name] = future.result()
                r = results[run.name]
                print(f"{run.name:48} rc={r['rc']:<4} {r.get('seconds', 0):>6}s steps={len(r['losses'])}", flush=True)
    return results


def checkpoint_keys(folder: Path) -> list[str]:
    """Tensor keys stored in a DCP checkpoint folder (its .metadata)."""
    import torch.distributed.checkpoint as dcp

    return sorted(dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata)


# --------------------------------------------------------------------------------------------- checks


def max_diff(a: dict, b: dict, steps=None) -> float:
    keys = [s for s in (steps or a) if s in a and s in b]
    if not keys:
        return math.inf
    return max(abs(a[s] - b[s]) for s in keys)


TOL_FLOOR = 2e-3
"""Cross-parallelism slack: a converted run may deviate from its single-GPU control by at most
max(2 x the deviation of stock torchtitan with the same layout, TOL_FLOOR)."""


def tolerance(stock_dev: float | None) -> float:
    return max(2 * (stock_dev or 0.0), TOL_FLOOR)


def check(results: dict[str, dict], out: Path | None = None) -> list[dict]:
    """Pass/fail rows.

    * ``runs``: every run exits 0 with every step's loss finite.
    * ``cache``: within a run, every rank and model part holds a bit-identical rotary cache (probe digests).
    * ``stock==equiv``: at the same layout, the stock-equivalent section and stock torchtitan have the same
      cache digest and the same losses at every step, to the 5 decimals torchtitan prints: torchtitan's own
      parity rule (scripts/loss_compare.py --assert-equal, used by its CI).
    * ``vs single``: per layout and rope, the largest loss difference to the single-GPU control over all
      steps. torchtitan asserts equality only between same-layout runs (and FSDP vs HSDP at step 1); its
      converging guide says different parallelisms cannot match exactly. So the yardstick is stock
      torchtitan itself: a converted run passes when its deviation is at most max(2 x stock's deviation
      for the same layout, TOL_FLOOR). Float8 runs are reported, not judged, against the float32 control.
    * ``resume``: a step-10 checkpoint resumed under the same layout reproduces the uninterrupted run's
      losses exactly; under another layout within the same cross-layout rule; with the converter on and
      off (stock-equivalent section) the resumed losses are identical.
    * ``checkpoint``: no rotary tensor in the seed or step-10 checkpoints.
    """
    rows: list[dict] = []

    def row(kind: str, name: str, ok: bool, detail: str) -> None:
        rows.append({"check": kind, "name": name, "ok": bool(ok), "detail": detail})

    for name, r in results.items():
        layout = LAYOUTS.get(r["layout"])
        if layout is not None and r["model"] in layout.stock_fails:
            stock = results.get(f"{r['model']}_stock_{r['layout']}")
            row("stock fails", name, r["rc"] not in (0, -1) and stock is not None and stock["rc"] not in (0, -1),
                f"rc={r['rc']}, stock rc={stock['rc'] if stock else None}: {r.get('error_line', '')}")
            continue
        finite = r["losses"] and all(math.isfinite(v) for v in r["losses"].values())
        row("runs", name, r["rc"] == 0 and (finite or r["layout"] == "seed"),
            f"rc={r['rc']} steps={len(r['losses'])}" + (f" last={r['losses'][max(r['losses'])]:.5f}" if r["losses"] else ""))
        if r["rc"] == 0 and r["layout"] != "seed":
            digests = {(p["buffer"], p["digest"]) for p in r["probes"]}
            ranks = {p["rank"] for p in r["probes"]}
            row("cache", name, len(digests) == 1 and len(ranks) == r["ngpu"],
                f"{len(ranks)} ranks, digests {sorted(d for _, d in digests)}")

    def get(model, rope, layout):
        return results.get(f"{model}_{rope}_{layout}")

    def ok_run(r):
        return r is not None and r["rc"] == 0 and r["losses"]

    for layout_name, layout in LAYOUTS.items():
        stock, equiv = get("llama3", "stock", layout_name), get("llama3", "equiv", layout_name)
        if ok_run(stock) and ok_run(equiv):
            same_cache = {p["digest"] for p in stock["probes"]} == {p["digest"] for p in equiv["probes"]}
            diff = max_diff(stock["losses"], equiv["losses"])
            # exact where torchtitan's determinism is on; else within the run-to-run noise allowance
            limit = 0.0 if layout.deterministic else TOL_FLOOR
            row("stock==equiv", f"llama3 {layout_name}",
                same_cache and diff <= limit and stock["losses"].keys() == equiv["losses"].keys(),
                f"cache digests equal: {same_cache}; max |loss diff| {diff:.1e} over {len(stock['losses'])} steps"
                + ("" if layout.deterministic else f" (not deterministic: allowed {limit:.0e})"))
        if layout_name == layout.baseline:
            continue
        for model in layout.models:
            if model in layout.stock_fails:
                continue
            stock_dev = None
            base = get(model, "stock", layout.baseline)
            here = get(model, "stock", layout_name)
            if ok_run(base) and ok_run(here):
                stock_dev = max_diff(here["losses"], base["losses"])
            for rope in ROPES[model]:
                run, control = get(model, rope, layout_name), get(model, rope, layout.baseline)
                if not (ok_run(run) and ok_run(control)):
                    continue
                dev = max_diff(run["losses"], control["losses"])
                first = abs(run["losses"][1] - control["losses"][1])
                tol = tolerance(stock_dev)
                judged = layout.float32 and rope != "stock"
                row("vs single", f"{model} {rope} {layout_name}", (dev <= tol) if judged else True,
                    f"max |loss - {layout.baseline}| {dev:.1e} (step 1: {first:.1e}); stock's {stock_dev if stock_dev is None else f'{stock_dev:.1e}'}"
                    + ("" if judged else "; reported only"))

    full_runs = {rope: get("llama3", rope, "fsdp4") for rope in ("equiv", "yarn")}
    stock_fsdp4, stock_tp = get("llama3", "stock", "fsdp4"), get("llama3", "stock", "tp2_fsdp2")
    stock_dev = max_diff(stock_tp["losses"], stock_fsdp4["losses"]) if ok_run(stock_tp) and ok_run(stock_fsdp4) else None
    steps = list(range(11, 21))
    for name, r in results.items():
        if not r["layout"].startswith("resume_") or not ok_run(r):
            continue
        saved_rope = name.split("_")[1]  # llama3_<rope of the saving run>_resume_...
        full, tp_full = full_runs[saved_rope], get("llama3", saved_rope, "tp2_fsdp2")
        if not ok_run(full):
            continue
        dev = max_diff(r["losses"], full["losses"], steps)
        if r["layout"] == "resume_fsdp4":
            row("resume", name, dev == 0.0 and min(r["losses"]) == 11,
                f"steps {min(r['losses'])}-{max(r['losses'])}; max |loss - uninterrupted fsdp4| {dev:.1e} (same layout: exact)")
        else:
            tol = tolerance(stock_dev)
            row("resume", name, dev <= tol and min(r["losses"]) == 11,
                f"steps {min(r['losses'])}-{max(r['losses'])}; max |loss - uninterrupted fsdp4| {dev:.1e}; tolerance {tol:.1e}"
                + (f"; vs uninterrupted tp2_fsdp2 {max_diff(r['losses'], tp_full['losses'], steps):.1e}" if ok_run(tp_full) else ""))
    on, off = results.get("llama3_equiv_resume_tp2_fsdp2_equiv"), results.get("llama3_equiv_resume_tp2_fsdp2_stock")
    if ok_run(on) and ok_run(off):
        row("resume", "converter on vs off after loading", max_diff(on["losses"], off["losses"]) == 0.0,
            f"max |loss diff| {max_diff(on['losses'], off['losses']):.1e}")

    if out is not None:
        for folder in [out / "runs" / f"{m}_seed" / "checkpoint" / "step-0" for m in ROPES] + \
                      [out / "runs" / f"llama3_{r}_save10" / "checkpoint" / "step-10" for r in ("equiv", "yarn")]:
            if folder.exists():
                keys = checkpoint_keys(folder)
                rope_keys = [k for k in keys if any(b in k for b in ROPE_KEYS)]
                row("checkpoint", str(folder.relative_to(out)), not rope_keys,
                    f"{len(keys)} tensors, rotary: {rope_keys or 'none'}")
    return rows


def layout_table(results: dict[str, dict]) -> str:
    """One line per layout: does it run, stock == equiv, each rope's largest loss gap to its control."""

    def cell(model, rope, name, layout):
        r, c = results.get(f"{model}_{rope}_{name}"), results.get(f"{model}_{rope}_{layout.baseline}")
        if r is None:
            return ""
        if r["rc"] != 0:
            return "stock fails" if model in layout.stock_fails else f"FAILED rc={r['rc']}"
        if name == layout.baseline:
            return f"{r['losses'][max(r['losses'])]:.5f} (control)"
        return f"{max_diff(r['losses'], c['losses']):.1e}" if c and c["rc"] == 0 else "no control"

    lines = ["| layout | GPUs | precision | llama3 stock / equiv / yarn: max \\|loss - control\\| | stock == equiv "
             "| qwen3 stock / yarn | one cache digest on |",
             "|---|---|---|---|---|---|---|"]
    for name, layout in LAYOUTS.items():
        llama = " / ".join(cell("llama3", rope, name, layout) for rope in ROPES["llama3"]) if "llama3" in layout.models else ""
        qwen = " / ".join(cell("qwen3", rope, name, layout) for rope in ROPES["qwen3"]) if "qwen3" in layout.models else ""
        stock, equiv = results.get(f"llama3_stock_{name}"), results.get(f"llama3_equiv_{name}")
        same = ""
        if stock and equiv and stock["rc"] == 0 and equiv["rc"] == 0:
            same = "identical" if stock["losses"] == equiv["losses"] else f"max diff {max_diff(stock['losses'], equiv['losses']):.0e}"
        ran = [r for m in ROPES for rope in ROPES[m] if (r := results.get(f"{m}_{rope}_{name}")) and r["rc"] == 0]
        agree = all(len({p["digest"] for p in r["probes"]}) == 1 and len({p["rank"] for p in r["probes"]}) == r["ngpu"]
                    for r in ran)
        precision = ("fp32" if layout.float32 else "bf16") + ("" if layout.deterministic else ", non-det.")
        lines.append(f"| {name} (vs {layout.baseline}) | {layout.ngpu} | {precision} | {llama} | {same} | {qwen} "
                     f"| {('every rank, ' + str(len(ran)) + ' runs') if ran and agree else ('DIFFER' if ran else '')} |")
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, dict], rows: list[dict]) -> str:
    lines = [layout_table(results), "", "| run | rc | loss at step 1 / 10 / 20 / 30 | seconds |", "|---|---|---|---|"]
    for name, r in results.items():
        pick = " / ".join(f"{r['losses'][s]:.5f}" if s in r["losses"] else "-" for s in (1, 10, 20, 30))
        lines.append(f"| {name} | {r['rc']} | {pick} | {r.get('seconds', '')} |")
    lines += ["", "| check | name | ok | detail |", "|---|---|---|---|"]
    lines += [f"| {c['check']} | {c['name']} | {'yes' if c['ok'] else '**NO**'} | {c['detail']} |" for c in rows]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/parallel"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--jobs", type=int, default=8, help="runs at once (they share the GPUs)")
    parser.add_argument("--only", default=None, help="regex on run names (seed and save runs they need are kept)")
    parser.add_argument("--timeout", type=int, default=400)
    parser.add_argument("--cpu", action="store_true", help="dry run on CPU (gloo) through titan-rope's CPU worker")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    runs = plan(out, args.steps)
    if args.only:
        wanted = {r.name for r in runs if re.search(args.only, r.name)}
        needed = {r.after for r in runs if r.name in wanted and r.after}
        needed |= {r.after for r in runs if r.name in needed and r.after}
        runs = [r for r in runs if r.name in wanted | needed]
    parity_corpus(out / "parity_corpus", str(REPO / "titan_rope_ext/assets/tokenizer"))
    ngpus = 0
    if not args.cpu:
        import torch

        ngpus = torch.cuda.device_count()
    results = run_all(runs, out, args.jobs, args.cpu, args.timeout, ngpus)
    rows = check(results, out)
    (out / "results.json").write_text(json.dumps({"results": results, "checks": rows}, indent=1))
    (out / "results.md").write_text(markdown(results, rows))
    failed = [c for c in rows if not c["ok"]]
    print(layout_table(results))
    print("\n".join(f"{c['check']:12} {c['name']:48} {'ok' if c['ok'] else 'FAIL'}  {c['detail']}" for c in rows if not c["ok"]))
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
