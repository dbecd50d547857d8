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
The measurements themselves are line-agnostic: ``titan_rope_ext.tools.evaluation``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from titan_rope_ext.tools.evaluation import evaluate, Evaluator, format_table, load_checkpoint, plot


def build_model(job, max_len: int, device: torch.device):
    """The parsed job's model, converted as in training, materialized on ``device`` for ``max_len`` positions."""
    from titan_rope_ext.torchtitan02.converter import NAME, RopeScalingConverter
    from titan_rope_ext.torchtitan02.tools._job import model_args_for

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


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _say(message: str) -> None:
    print(f"titan-rope eval: {message}", file=sys.stderr, flush=True)


def run(opts, torchtitan_args: list[str]) -> int:
    """``titan-rope eval`` with parsed options (see ``titan_rope_cli``) and the torchtitan arguments."""
    import importlib.util

    from titan_rope_ext.torchtitan02.launch.check import ConfigError, preflight

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
    """``python -m titan_rope_ext.torchtitan02.tools.evaluate ...`` = ``titan-rope eval ...``."""
    import titan_rope_cli

    return titan_rope_cli.main(["eval", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
