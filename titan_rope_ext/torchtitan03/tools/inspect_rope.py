"""``titan-rope inspect --module M --config F [--plot out.png] [torchtitan flags]`` on torchtitan 0.3: a job's RoPE per band.

The job is resolved as ``titan-rope train`` resolves it: torchtitan's ConfigManager parses the ``jobs`` form of
the arguments into a ``RopeTrainer.Config`` (with the same checks, exit 2 on a bad job), the section is swapped
into a copy of the model config with ``max_seq_len = training.seq_len``, and that model is built on the meta
device (nothing is allocated). "stock" is what torchtitan 0.3 itself builds for the flavor's RoPE config (its
``_precompute_cache`` on CPU, decoded); the table and plot are those of 0.2's ``titan-rope inspect``.
"""

from __future__ import annotations

import copy
import dataclasses
import sys

import torch

from titan_rope_ext.config import rope_frequencies, RopeScaling
from titan_rope_ext.tools.rope_bands import decode, Inspection, report, trained_length


def inspect_job(args: list[str]) -> Inspection:
    """Resolves ``args`` (``titan-rope train`` arguments) like training does; raises ConfigError on a bad job."""
    from titan_rope_ext.torchtitan03.launch.check import ConfigError, preflight
    from titan_rope_ext.torchtitan03.models import attentions, scale_model

    config = preflight(args)
    section = config.resolved_rope_scaling()
    spec, seq_len = config.model_spec, config.training.seq_len
    stock_rope = attentions(spec.model)[0][2].rope
    converted = copy.deepcopy(spec.model)
    try:
        scale_model(converted, section, max_seq_len=seq_len, model_name=spec.name)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    with torch.device("meta"):
        converted.build()  # the model training builds, on meta: no allocation
    head_dim, theta = stock_rope.dim, stock_rope.theta
    with torch.device("cpu"):
        # stock's frequencies do not depend on the length: two rows are enough to read them
        stock, stock_factor = decode(dataclasses.replace(stock_rope, max_seq_len=2).build().cache, head_dim)
        inv_freq, attention_factor = rope_frequencies(section, head_dim, theta, seq_len)
        default, _ = rope_frequencies(RopeScaling(), head_dim, theta, seq_len)
    return Inspection(spec.name, spec.flavor, head_dim, theta, seq_len, section, trained_length(section, seq_len),
                      default.double(), stock, stock_factor, inv_freq.double(), attention_factor)


def run(opts, args: list[str]) -> int:
    """``titan-rope inspect`` on torchtitan 0.3 with parsed options (``plot``) and the job's arguments."""
    from titan_rope_ext.torchtitan03.launch.check import ConfigError

    return report(lambda: inspect_job(args), opts.plot, ConfigError)


def main(argv: list[str] | None = None) -> int:
    """``python -m titan_rope_ext.torchtitan03.tools.inspect_rope ...`` = ``titan-rope inspect ...`` on 0.3."""
    import titan_rope_cli

    return titan_rope_cli.main(["inspect", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
