"""Regenerate the shipped tiny corpus and tokenizer (no downloads, deterministic).

    python -m titan_rope_ext.assets.make_assets

writes ``corpus/train.jsonl`` (records ``{"text": ...}``, the layout torchtitan's
``c4_test`` loader reads) and ``tokenizer/{tokenizer.json,tokenizer_config.json}``
(a byte-level BPE with 2048 ids, the vocab size of torchtitan's llama3 debug flavor).

The corpus is synthetic English-like prose with long-range structure: each document
hides a five-digit pass key early on and asks for it again near the end, so a model
that uses positions far apart can lower its loss on the answer digits.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOCAB_SIZE = 2048
BOS, EOS = "<|begin_of_text|>", "<|end_of_text|>"

_SUBJECTS = ["the river", "a small boat", "the old miller", "my neighbour", "the north wind",
             "a grey heron", "the village clock", "her brother", "the first train", "a tired horse",
             "the baker", "our teacher", "the lighthouse", "a young fox", "the market square"]
_VERBS = ["crossed", "watched", "carried", "followed", "remembered", "painted", "found",
          "counted", "opened", "lifted", "called", "measured", "passed", "forgot", "repaired"]
_OBJECTS = ["the wooden bridge", "seven apples", "a long letter", "the evening light",
            "three blue stones", "the narrow road", "a heavy basket", "the quiet field",
            "an empty cup", "the tall gate", "the last page", "a paper map", "the cold water"]
_TAILS = ["before the rain", "after supper", "near the hill", "without a word", "at dawn",
          "for the second time", "in the morning", "under the trees", "by the old wall", "again"]


def _sentence(rng: random.Random) -> str:
    s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."
    return s[0].upper() + s[1:]


def make_document(rng: random.Random, n_sentences: int, anywhere: bool = False) -> str:
    """One document: filler prose with a pass key stated early (``anywhere``: at any depth) and asked
    for at the end."""
    key = f"{rng.randrange(10000, 100000)}"
    depth = rng.randrange(0, n_sentences + 1) if anywhere else rng.randrange(0, max(1, n_sentences // 4))
    parts = [_sentence(rng) for _ in range(n_sentences)]
    parts.insert(depth, f"The pass key is {key}. Remember it. {key} is the pass key.")
    parts.append(f"What is the pass key? The pass key is {key}.")
    return " ".join(parts)


SENTENCES = (20, 120)
"""Filler sentences per document of the shipped corpus (lower bound inclusive, upper exclusive)."""


def make_corpus(n_docs: int = 600, seed: int = 0, sentences: tuple[int, int] = SENTENCES,
                anywhere: bool = False) -> list[str]:
    """``n_docs`` documents of ``sentences[0]`` to ``sentences[1] - 1`` filler sentences (~12 tokens each)."""
    rng = random.Random(seed)
    return [make_document(rng, rng.randrange(*sentences), anywhere) for _ in range(n_docs)]


def write_corpus(folder: Path, texts: list[str]) -> Path:
    """``folder/train.jsonl`` in the layout torchtitan's ``c4_test`` loader reads; returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    return folder


def make_tokenizer(texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def main() -> None:
    texts = make_corpus()
    tok_dir = HERE / "tokenizer"
    write_corpus(HERE / "corpus", texts)
    tok_dir.mkdir(exist_ok=True)
    tok = make_tokenizer(texts)
    tok.save(str(tok_dir / "tokenizer.json"))
    with open(tok_dir / "tokenizer_config.json", "w") as f:
        json.dump({"bos_token": BOS, "eos_token": EOS, "add_bos_token": True,
                   "add_eos_token": True, "model_max_length": 1 << 20}, f, indent=2)
    print(f"{len(texts)} documents, vocab {tok.get_vocab_size()}")


if __name__ == "__main__":
    main()
