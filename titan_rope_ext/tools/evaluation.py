"""The measurements of ``titan-rope eval``, for either torchtitan line: a model in, numbers out.

For each length ``T``: sliding-window perplexity (window ``T``, every token scored once with as much left
context as the window allows: the YaRN / LongLoRA evaluation), perplexity by position bucket inside
non-overlapping windows of ``T`` tokens, and passkey retrieval (a random five-digit key stated once at a
relative depth of filler text, then "What is the pass key? The pass key is"; the greedy continuation must
be the key). Held-out documents are generated like the shipped corpus, with another seed.
"""

from __future__ import annotations

import math
import random
import warnings

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
