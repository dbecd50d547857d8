"""The measurements of ``titan-rope eval``, for either torchtitan line: a model in, numbers out.

For each length ``T``: sliding-window perplexity (window ``T``, every token scored once with as much left
context as the window allows: the YaRN / LongLoRA evaluation), perplexity by position bucket inside
non-overlapping windows of ``T`` tokens, and passkey retrieval (a random five-digit key stated once at a
relative depth of filler text, then "What is the pass key? The pass key is"; the greedy continuation must
be the key). Held-out documents are generated like the shipped corpus, with another seed.

``run`` is the command itself for either line: each line's ``tools/evaluate.py`` reads its job into an ``EvalJob``
(what the model is, how to build it on meta for a length, which attention masks its forward takes); checking,
loading, measuring and writing are here.
"""

from __future__ import annotations

import importlib.util
import json
import math
import random
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F


def load_checkpoint(model: torch.nn.Module, path: str) -> int:
    """Loads the model's tensors from a torchtitan DCP folder; returns how many were loaded."""
    import torch.distributed.checkpoint as dcp

    state = model.state_dict()
    stored = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    missing = sorted(k for k in state if k not in stored)
    if missing:
        raise ValueError(f"--checkpoint {path}: no tensors for {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    with warnings.catch_warnings():  # "torch.distributed is disabled ... load in a single process": intended
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=path)  # in place: state_dict()'s tensors are the model's own
    return len(state)



class Evaluator:
    def __init__(self, model, tokenizer, device: torch.device,
                 attention_masks: Callable[[torch.Tensor], Any] | None = None):
        """``attention_masks(tokens)``: the masks the model's forward takes for a batch of windows (each line's glue
        knows its model's call), or None for a model that takes none (SDPA: causal over the window)."""
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device
        self.attention_masks = attention_masks
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device)
        kwargs = {} if self.attention_masks is None else {"attention_masks": self.attention_masks(tokens)}
        with self.autocast:
            return self.model(tokens, **kwargs).float()

    def token_nll(self, window: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of tokens 1..T-1 of ``window`` (T,), each given the ones before."""
        logits = self.logits(window[None, :-1])[0]
        return F.cross_entropy(logits, window[1:].to(self.device), reduction="none").cpu()

    def sliding_ppl(self, stream: torch.Tensor, length: int, stride: int, budget: int) -> float:
        total, count, scored_to = 0.0, 0, 0
        for start in range(0, max(1, len(stream) - length), stride):
            window = stream[start:start + length + 1]
            nll = self.token_nll(window)
            fresh = nll[max(0, scored_to - start):]  # tokens not scored by an earlier window
            total, count = total + float(fresh.sum()), count + len(fresh)
            scored_to = start + len(window) - 1
            if count >= budget:
                break
        return math.exp(total / max(count, 1))

    def ppl_by_position(self, stream: torch.Tensor, length: int, buckets: int, budget: int) -> list[float]:
        sums, counts = torch.zeros(buckets, dtype=torch.float64), torch.zeros(buckets, dtype=torch.float64)
        bucket_of = torch.arange(length) * buckets // length
        for start in range(0, len(stream) - length - 1, length):
            nll = self.token_nll(stream[start:start + length + 1])
            sums.index_add_(0, bucket_of, nll.double())
            counts.index_add_(0, bucket_of, torch.ones(length, dtype=torch.float64))
            if counts.sum() >= budget:
                break
        return [math.exp(s / c) if c else float("nan") for s, c in zip(sums.tolist(), counts.tolist())]

    def greedy(self, prompt: list[int], n: int) -> list[int]:
        tokens = list(prompt)
        for _ in range(n):
            nxt = int(self.logits(torch.tensor([tokens]))[0, -1].argmax())
            tokens.append(nxt)
        return tokens[len(prompt):]



def heldout_stream(tokenizer, n_tokens: int, seed: int) -> torch.Tensor:
    """Documents generated like the shipped corpus (another seed), encoded with BOS/EOS and concatenated."""
    from titan_rope_ext.assets.make_assets import make_document, SENTENCES

    rng, ids = random.Random(seed), []
    while len(ids) < n_tokens:
        ids += tokenizer.encode(make_document(rng, rng.randrange(*SENTENCES)), add_bos=True, add_eos=True)
    return torch.tensor(ids[:n_tokens])



def passkey_prompt(tokenizer, length: int, depth: float, rng: random.Random) -> tuple[list[int], str]:
    """A prompt of at most ``length`` tokens: filler, the key at ``depth`` (0 = start, 1 = end), the question."""
    from titan_rope_ext.assets.make_assets import _sentence

    key = f"{rng.randrange(10000, 100000)}"
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    question = "What is the pass key? The pass key is"
    budget = length - len(tokenizer.encode(f"{needle} {question}", add_bos=True, add_eos=False)) - 8
    filler: list[str] = []
    while len(tokenizer.encode(" ".join(filler + [_sentence(rng)]), add_bos=False, add_eos=False)) < budget:
        filler.append(_sentence(rng))
    at = round(depth * len(filler))
    text = " ".join(filler[:at] + [needle] + filler[at:] + [question])
    return tokenizer.encode(text, add_bos=True, add_eos=False), key



def evaluate(ev: Evaluator, tokenizer, lengths: list[int], depths: list[float], trials: int, stride: int,
             buckets: int, tokens: int, seed: int, progress=None) -> dict:
    stream = heldout_stream(tokenizer, tokens + max(lengths) + 1, seed)
    rng = random.Random(seed + 1)
    result: dict = {"lengths": lengths, "depths": depths, "sliding_ppl": {}, "ppl_by_position": {}, "passkey": {},
                    "passkey_misses": {}}
    for length in lengths:
        result["sliding_ppl"][length] = ev.sliding_ppl(stream, length, min(stride, length), tokens)
        result["ppl_by_position"][length] = ev.ppl_by_position(stream, length, buckets, tokens)
        progress and progress(1)
        result["passkey"][length] = {}
        misses = result["passkey_misses"][length] = []  # the first few wrong answers, to see how they fail
        for depth in depths:
            hits = 0
            for _ in range(trials):
                prompt, key = passkey_prompt(tokenizer, length, depth, rng)
                answer = tokenizer.decode(ev.greedy(prompt, len(key) + 1)).strip()
                hits += answer.startswith(key)
                if not answer.startswith(key) and len(misses) < 5:
                    misses.append({"depth": depth, "key": key, "answer": answer})
                progress and progress(1)
            result["passkey"][length][depth] = hits / trials
    return result



def format_table(result: dict, trained_length: int | None) -> str:
    lengths, depths = result["lengths"], result["depths"]
    buckets = len(next(iter(result["ppl_by_position"].values())))
    lines = [f"{'length':>7} {'x trained':>9} {'sliding ppl':>11}  {'ppl by position bucket':<{9 * buckets}}  passkey accuracy by depth "
             + " ".join(f"{d:g}" for d in depths)]
    for length in lengths:
        ratio = f"{length / trained_length:g}" if trained_length else "-"
        by_pos = " ".join(f"{p:8.3f}" for p in result["ppl_by_position"][length])
        keys = " ".join(f"{result['passkey'][length][d]:.2f}" for d in depths)
        lines.append(f"{length:>7} {ratio:>9} {result['sliding_ppl'][length]:>11.3f}  {by_pos:<{9 * buckets}}  {keys}")
    return "\n".join(lines)



def plot(result: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.5))
    for length in result["lengths"]:
        ppl = result["ppl_by_position"][length]
        centers = [(i + 0.5) * length / len(ppl) for i in range(len(ppl))]
        a.plot(centers, ppl, marker="o", label=f"T = {length}")
    a.set_xlabel("position in window")
    a.set_ylabel("perplexity")
    a.set_yscale("log")
    a.legend(fontsize=8)
    a.set_title("perplexity by position")
    grid = [[result["passkey"][length][d] for d in result["depths"]] for length in result["lengths"]]
    im = b.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    b.set_xticks(range(len(result["depths"])), [f"{d:g}" for d in result["depths"]])
    b.set_yticks(range(len(result["lengths"])), [str(x) for x in result["lengths"]])
    b.set_xlabel("key depth")
    b.set_ylabel("length")
    b.set_title("passkey accuracy")
    fig.colorbar(im, ax=b)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the command, for either line ----------------------------------------------------------------------


@dataclass
class Built:
    """A job's model for ``max_len`` positions, as one line's glue builds it."""

    model: torch.nn.Module
    """Converted as in training, on the meta device (nothing allocated), its cache sized ``max_len``."""
    tokenizer: Any
    attention_masks: Callable[[torch.Tensor], Any] | None
    """See ``Evaluator``."""
    rope: str
    """The RoPE the model computes, for the report (``RopeScaling.describe()`` or what stock torchtitan has)."""
    trained_length: int | None
    """The "x trained" column's denominator: the section's original length; None: the job's training length."""


@dataclass
class EvalJob:
    """A parsed torchtitan job, as ``titan-rope eval`` needs it (each line's ``tools/evaluate.py`` reads it)."""

    model: str
    flavor: str
    training_seq_len: int
    dump_folder: str
    build: Callable[[int], Built]
    """``build(max_len)``; raises ValueError for what the job cannot evaluate."""


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _say(message: str) -> None:
    print(f"titan-rope eval: {message}", file=sys.stderr, flush=True)


def materialize(model: torch.nn.Module, device: torch.device) -> None:
    """A meta model on ``device`` as torchtitan's Trainer does it (both lines): ``to_empty``, then ``init_weights``,
    which rebuilds every non-persistent buffer (the rotary caches) there."""
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=device)


def run(opts, read_job: Callable[[torch.device], EvalJob]) -> int:
    """``titan-rope eval`` with parsed options (see ``titan_rope_cli``) and a line's job reader: one line and status
    2 for a bad job or checkpoint (names and shapes checked on meta, before any tensor is allocated), else the
    table on stdout and ``eval.json`` (and ``eval.png``) in ``--out``."""
    from tqdm import tqdm

    from titan_rope_ext.tools.hf_folder import check_checkpoint

    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    depths = _floats(opts.depths)
    try:
        if any(not 0 <= d <= 1 for d in depths):
            raise ValueError(f"--depths must lie in [0, 1], got {opts.depths}")
        _say("reading the job")
        job = read_job(device)
        if not Path(opts.checkpoint, ".metadata").is_file():
            raise ValueError(f"--checkpoint {opts.checkpoint!r} is not a torchtitan DCP folder (no .metadata)")
        lengths = ([int(x) for x in opts.lengths.split(",")] if opts.lengths
                   else [job.training_seq_len * k for k in (1, 2, 4, 8)])
        if any(x < 16 for x in lengths):
            raise ValueError(f"--lengths must be >= 16, got {opts.lengths}")
        out = Path(opts.out) if opts.out else Path(job.dump_folder) / "eval" / Path(opts.checkpoint).name
        _say(f"building the model for {max(lengths)} positions on {device} and loading {opts.checkpoint}")
        built = job.build(max(lengths))
        check_checkpoint(opts.checkpoint, {k: v.shape for k, v in built.model.state_dict().items()})
        materialize(built.model, device)
        load_checkpoint(built.model, opts.checkpoint)
    except ValueError as e:  # each line's ConfigError is one
        print(f"titan-rope: error: {e}", file=sys.stderr)
        return 2
    ev = Evaluator(built.model, built.tokenizer, device, built.attention_masks)
    _say(f"lengths {lengths}: sliding-window and per-position perplexity over {opts.tokens} tokens, then "
         f"{len(depths) * opts.trials} passkey prompts, per length; results go to {out}")
    with tqdm(total=len(lengths) * (1 + len(depths) * opts.trials), desc="titan-rope eval", file=sys.stderr) as bar:
        result = evaluate(ev, built.tokenizer, lengths, depths, opts.trials, opts.stride, opts.buckets, opts.tokens,
                          opts.seed, bar.update)
    result.update(checkpoint=opts.checkpoint, model=job.model, flavor=job.flavor, device=str(device),
                  rope=built.rope, training_seq_len=job.training_seq_len)
    print(f"{job.model} {job.flavor}, {built.rope}, checkpoint {opts.checkpoint}")
    print(format_table(result, built.trained_length or job.training_seq_len))
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    if importlib.util.find_spec("matplotlib") is None:
        print(f"wrote {out / 'eval.json'} (no eval.png: matplotlib is missing; "
              "pip install 'titan_rope_ext[plot]')")
    else:
        plot(result, str(out / "eval.png"), f"{job.model} {job.flavor}: {built.rope}")
        print(f"wrote {out / 'eval.json'} and {out / 'eval.png'}")
    return 0
