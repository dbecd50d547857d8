"""Context extension, reproduced small: pretrain short with plain RoPE, extend with each method, evaluate.

    python scripts/reproduce_extension.py --out outputs/extension            # one GPU, ~20 min
    python scripts/reproduce_extension.py --out /tmp/x --short-len 32 --factor 2 --pretrain-steps 3 \\
        --finetune-steps 2 --methods default,yarn --tokens 512 --trials 1 --depths 0.5   # toy, CPU

1. Pretrain the llama3 debug model at length L (``--short-len``) with ``default`` RoPE on documents
   generated like the shipped corpus (a pass key stated early, asked for at the end), each short
   enough to fit in L tokens, so the key and its question share a training window.
2. From that checkpoint (weights only), fine-tune at ``factor x L`` (documents up to that length) with each of
   ``--methods`` (default = no scaling, linear, ntk, yarn, llama3), each at ``factor`` over L.
3. ``titan-rope eval`` every fine-tuned checkpoint (and the pretrained one) at L, 2L, 4L, 8L:
   sliding-window perplexity and passkey retrieval.

A stage whose final checkpoint (or eval JSON) is already in ``--out`` is skipped, so the same command
resumes an interrupted run. Every step is ``titan-rope train`` / ``titan-rope eval`` (torchtitan's own trainer; CPU-only hosts
too). Writes ``results.json``, ``results.md`` (the table) and ``results.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_TOML = "configs/llama3_debug_default.toml"


def method_flags(method: str, factor: float, short_len: int) -> list[str]:
    """The [rope_scaling] keys each method takes for ``factor`` over ``short_len`` (transformers' names)."""
    keys = {
        "default": {},
        "linear": {"factor": factor},
        "ntk": {"factor": factor},
        "yarn": {"factor": factor, "original_max_position_embeddings": short_len},
        "llama3": {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": short_len},
    }[method]
    flags = ["--rope_scaling.rope_type", method]
    for key, value in keys.items():
        flags += [f"--rope_scaling.{key}", str(value)]
    return flags


def run(cmd: list[str], log: Path, done: Path) -> None:
    """Run one stage unless ``done`` (its final checkpoint's DCP metadata, or its eval JSON) exists: a rerun
    resumes."""
    if done.exists():
        print(f"  {' '.join(cmd[2:5])} ... done already ({done})", flush=True)
        return
    start = time.time()
    with open(log, "w") as handle:
        rc = subprocess.call(cmd, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT)
    print(f"  {' '.join(cmd[2:5])} ... rc={rc} ({time.time() - start:.0f} s, log {log})", flush=True)
    if rc != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n" + "\n".join(log.read_text().splitlines()[-20:]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--short-len", type=int, default=256)
    p.add_argument("--factor", type=float, default=4.0)
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=16, help="pretraining batch; fine-tunes keep the tokens per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--finetune-lr", type=float, default=None, help="fine-tuning peak LR (default: --lr)")
    p.add_argument("--methods", default="default,linear,ntk,yarn,llama3")
    p.add_argument("--lengths", default=None, help="eval lengths (default L, 2L, 4L, 8L)")
    p.add_argument("--tokens", type=int, default=32768)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--depths", default="0,0.25,0.5,0.75,1")
    p.add_argument("--flavor", default="debugmodel")
    p.add_argument("--docs", type=int, default=20000, help="pretraining documents (fine-tuning: docs / factor)")
    p.add_argument("--no-pretrained-eval", action="store_true", help="evaluate the fine-tuned checkpoints only")
    opts, extra = p.parse_known_args(argv)
    out = opts.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    L, F = opts.short_len, opts.factor
    long_len = int(L * F)
    finetune_lr = opts.finetune_lr or opts.lr
    lengths = opts.lengths or ",".join(str(L * k) for k in (1, 2, 4, 8))
    # Corpora matched to each stage's window: a document (pass key early, question at the end) fits in L
    # tokens for pretraining and in factor x L for fine-tuning, so the key and its question share a window
    # and retrieval is learnable at the distances of that stage (~12 tokens per filler sentence).
    from titan_rope_ext.assets.make_assets import make_corpus, write_corpus

    def corpus(name: str, window: int, n_docs: int, seed: int) -> str:
        most = max(5, window // 14)
        # the key at any depth: a key always early would teach "copy from the start", not retrieval
        return str(write_corpus(out / name, make_corpus(n_docs, seed, (max(2, most // 4), most), anywhere=True)))

    pre_corpus = corpus("corpus_pretrain", L, opts.docs, 10)
    ft_corpus = corpus("corpus_finetune", long_len, max(1, opts.docs // int(F)), 11)
    cli = [sys.executable, "-m", "titan_rope_cli"]
    common = ["--job.config_file", BASE_TOML, "--model.flavor", opts.flavor, "--metrics.log_freq", "10", "--debug.seed", "0", "--lr_scheduler.decay_ratio", "0.2", *extra]

    print(f"1. pretrain at {L} with default RoPE, {opts.pretrain_steps} steps", flush=True)
    pre = out / "pretrain"
    pre_ckpt = pre / "checkpoint" / f"step-{opts.pretrain_steps}"
    run([*cli, "train", *common, "--optimizer.lr", str(opts.lr), "--job.dump_folder", str(pre),
         "--training.seq_len", str(L),
         "--training.dataset_path", pre_corpus,
         "--training.local_batch_size", str(opts.batch), "--training.steps", str(opts.pretrain_steps),
         "--lr_scheduler.warmup_steps", str(max(1, opts.pretrain_steps // 20)),
         "--checkpoint.enable", "--checkpoint.interval", str(opts.pretrain_steps)], out / "pretrain.log", pre_ckpt / ".metadata")

    methods = opts.methods.split(",")
    ckpts = {} if opts.no_pretrained_eval else {
        "pretrained (default, no fine-tune)": (pre_ckpt, method_flags("default", F, L))}
    print(f"2. fine-tune at {long_len} ({F:g}x) for {opts.finetune_steps} steps: {', '.join(methods)}", flush=True)
    batch = max(1, int(opts.batch / F))  # the same tokens per step as pretraining
    for method in methods:
        dump = out / f"ft_{method}"
        flags = method_flags(method, F, L)
        ckpts[method] = (dump / "checkpoint" / f"step-{opts.finetune_steps}", flags)
        run([*cli, "train", *common, *flags, "--optimizer.lr", str(finetune_lr),
             "--job.dump_folder", str(dump), "--training.seq_len", str(long_len),
             "--training.dataset_path", ft_corpus,
             "--training.local_batch_size", str(batch), "--training.steps", str(opts.finetune_steps),
             "--lr_scheduler.warmup_steps", str(max(1, opts.finetune_steps // 10)),
             "--checkpoint.enable", "--checkpoint.interval", str(opts.finetune_steps),
             "--checkpoint.initial_load_path", str(pre_ckpt)], out / f"ft_{method}.log", ckpts[method][0] / ".metadata")

    print(f"3. evaluate at {lengths}", flush=True)
    results = {}
    for name, (ckpt, flags) in ckpts.items():
        tag = name.split(" ")[0]
        run([*cli, "eval", "--job.config_file", BASE_TOML, "--model.flavor", opts.flavor, *flags,
             "--training.seq_len", str(L), "--checkpoint", str(ckpt), "--lengths", lengths,
             "--tokens", str(opts.tokens), "--trials", str(opts.trials), "--depths", opts.depths,
             "--out", str(out / f"eval_{tag}"), *extra], out / f"eval_{tag}.log", out / f"eval_{tag}" / "eval.json")
        results[name] = json.loads((out / f"eval_{tag}" / "eval.json").read_text())

    summary = {"short_len": L, "factor": F, "pretrain_steps": opts.pretrain_steps,
               "finetune_steps": opts.finetune_steps, "flavor": opts.flavor, "lr": opts.lr,
               "finetune_lr": finetune_lr, "results": results}
    (out / "results.json").write_text(json.dumps(summary, indent=1))
    table = markdown(summary)
    (out / "results.md").write_text(table)
    plot(summary, out / "results.png")
    print(table)
    return 0


def markdown(summary: dict) -> str:
    results = summary["results"]
    lengths = next(iter(results.values()))["lengths"]
    L = summary["short_len"]
    head = " | ".join(f"{x} ({x / L:g}L)" for x in lengths)
    lines = [f"Sliding-window perplexity (lower is better); pretrained at L = {L}, fine-tuned at "
             f"{summary['factor']:g}L for {summary['finetune_steps']} steps", "",
             f"| method | {head} |", "|---|" + "---|" * len(lengths)]
    for name, r in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{r['sliding_ppl'][str(x)]:.3f}" for x in lengths) + " |")
    lines += ["", "Passkey retrieval accuracy (mean over depths)", "",
              f"| method | {head} |", "|---|" + "---|" * len(lengths)]
    for name, r in results.items():
        accs = [sum(r["passkey"][str(x)].values()) / len(r["passkey"][str(x)]) for x in lengths]
        lines.append(f"| {name} | " + " | ".join(f"{a:.2f}" for a in accs) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    L = summary["short_len"]
    for name, r in summary["results"].items():
        xs = r["lengths"]
        a.plot([x / L for x in xs], [r["sliding_ppl"][str(x)] for x in xs], marker="o", label=name)
        b.plot([x / L for x in xs], [sum(r["passkey"][str(x)].values()) / len(r["passkey"][str(x)]) for x in xs],
               marker="o", label=name)
    for ax in (a, b):
        ax.axvline(summary["factor"], color="gray", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("evaluation length / pretraining length L")
    a.set_yscale("log")
    a.set_ylabel("sliding-window perplexity")
    b.set_ylabel("passkey accuracy")
    b.set_ylim(-0.05, 1.05)
    a.legend(fontsize=8)
    fig.suptitle(f"llama3 {summary['flavor']}: pretrained at {L}, fine-tuned at {summary['factor']:g}L "
                 f"for {summary['finetune_steps']} steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
