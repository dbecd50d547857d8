"""``titan-rope eval``: how a trained checkpoint behaves at and past its training length.

    titan-rope eval --job.config_file JOB.toml --checkpoint DUMP/checkpoint/step-N \\
        [--lengths 256,512,1024,2048] [--out DIR] [torchtitan overrides]

The job is resolved as training resolves it (torchtitan's ConfigManager, the launcher's check, the
train spec's model args with ``update_from_config``); the model is built on the meta device, converted
by ``rope_scaling`` when the job lists it, materialized (``to_empty`` + ``init_weights``) and loaded
from the torchtitan DCP checkpoint (the model's own keys; a full or a model-only checkpoint). The
rotary cache is built for the longest evaluated length (``model_args.max_seq_len``); ``dynamic`` and
``longrope``, whose numbers depend on that length, see the longest one, as transformers' dynamic RoPE
sees the current length.

Measured on a held-out corpus (documents generated like the training corpus, another seed) for each
length ``T`` in ``--lengths``:

* sliding-window perplexity (window ``T``, stride ``--stride``, every token scored once with as much
  left context as the window allows: the YaRN / LongLoRA evaluation), and perplexity by position
  bucket inside non-overlapping windows of ``T`` tokens (``--buckets`` equal buckets);
* passkey retrieval: a random five-digit key stated once at a relative depth of the filler text, the
  text ending with "What is the pass key? The pass key is"; the model's greedy continuation must be
  the key (``--trials`` per length and depth).

Output: a table on stdout, ``DIR/eval.json`` and ``DIR/eval.png`` (``--out``, default
``<job.dump_folder>/eval/<checkpoint folder name>``). CPU or GPU (``--device``). The options are
defined in ``titan_rope_cli`` so that ``--help`` answers without importing torch.
"""

from __future__ import annotations

import json
import math
import random
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F


def build_model(job, max_len: int, device: torch.device):
    """The parsed job's model, converted as in training, materialized on ``device`` for ``max_len`` positions."""
    from titan_rope_ext.converter import NAME, RopeScalingConverter
    from titan_rope_ext.tools._job import model_args_for

    spec, model_args = model_args_for(job, max_seq_len=max_len)
    with torch.device("meta"):
        model = spec.model_cls(model_args)
    if NAME in job.model.converters:
        RopeScalingConverter(job, parallel_dims=None).convert(model)
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights(buffer_device=device)
    tokenizer = spec.build_tokenizer_fn(job) if spec.build_tokenizer_fn is not None else None
    return model, tokenizer


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
    def __init__(self, model, tokenizer, device: torch.device, attn_type: str):
        self.model, self.tokenizer, self.device = model.eval(), tokenizer, device
        self.attn_type = attn_type
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    @torch.no_grad()
    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens.to(self.device)
        kwargs = {}
        if self.attn_type in ("flex", "varlen"):
            kwargs["attention_masks"] = self.model.get_attention_masks(input_batch=tokens, tokenizer=self.tokenizer)
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


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _say(message: str) -> None:
    print(f"titan-rope eval: {message}", file=sys.stderr, flush=True)


def run(opts, torchtitan_args: list[str]) -> int:
    """``titan-rope eval`` with parsed options (see ``titan_rope_cli``) and the torchtitan arguments."""
    import importlib.util

    from titan_rope_ext.launch.check import ConfigError, preflight

    device = torch.device(opts.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    depths = _floats(opts.depths)
    try:
        if any(not 0 <= d <= 1 for d in depths):
            raise ConfigError(f"--depths must lie in [0, 1], got {opts.depths}")
        _say("reading the job")
        job = preflight(torchtitan_args)
        if not Path(opts.checkpoint, ".metadata").is_file():
            raise ConfigError(f"--checkpoint {opts.checkpoint!r} is not a torchtitan DCP folder (no .metadata)")
        lengths = ([int(x) for x in opts.lengths.split(",")] if opts.lengths
                   else [job.training.seq_len * k for k in (1, 2, 4, 8)])
        if any(x < 16 for x in lengths):
            raise ConfigError(f"--lengths must be >= 16, got {opts.lengths}")
        out = Path(opts.out) if opts.out else Path(job.job.dump_folder) / "eval" / Path(opts.checkpoint).name
        _say(f"building the model for {max(lengths)} positions on {device} and loading {opts.checkpoint}")
        model, tokenizer = build_model(job, max(lengths), device)
        load_checkpoint(model, opts.checkpoint)
    except (ConfigError, ValueError) as e:
        print(f"titan-rope: error: {e}", file=sys.stderr)
        return 2
    from tqdm import tqdm

    section = getattr(job, "rope_scaling", None)
    converted = "rope_scaling" in job.model.converters
    trained = section.original_max_position_embeddings if converted and section else None
    ev = Evaluator(model, tokenizer, device, getattr(model.model_args, "attn_type", "sdpa"))
    _say(f"lengths {lengths}: sliding-window and per-position perplexity over {opts.tokens} tokens, then "
         f"{len(depths) * opts.trials} passkey prompts, per length; results go to {out}")
    with tqdm(total=len(lengths) * (1 + len(depths) * opts.trials), desc="titan-rope eval", file=sys.stderr) as bar:
        result = evaluate(ev, tokenizer, lengths, depths, opts.trials, opts.stride, opts.buckets, opts.tokens,
                          opts.seed, bar.update)
    result.update(checkpoint=opts.checkpoint, model=job.model.name, flavor=job.model.flavor, device=str(device),
                  rope=section.describe() if converted and section else "stock torchtitan (converter off)",
                  training_seq_len=job.training.seq_len)
    print(f"{job.model.name} {job.model.flavor}, {result['rope']}, checkpoint {opts.checkpoint}")
    print(format_table(result, trained or job.training.seq_len))
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(result, indent=1))
    if importlib.util.find_spec("matplotlib") is None:
        print(f"wrote {out / 'eval.json'} (no eval.png: matplotlib is missing; "
              "pip install 'titan_rope_ext[plot]')")
    else:
        plot(result, str(out / "eval.png"), f"{job.model.name} {job.model.flavor}: {result['rope']}")
        print(f"wrote {out / 'eval.json'} and {out / 'eval.png'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m titan_rope_ext.tools.evaluate ...`` = ``titan-rope eval ...``."""
    import titan_rope_cli

    return titan_rope_cli.main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
