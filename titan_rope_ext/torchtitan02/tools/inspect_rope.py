"""``titan-rope inspect CONFIG.toml [--plot out.png] [torchtitan overrides]``: what a job's RoPE does, per band.

The job is resolved the way training resolves it: torchtitan's ConfigManager parses the TOML and the
overrides (with our ``[rope_scaling]`` section), the launcher's pre-launch check runs, the train spec's
model args take ``update_from_config`` as in torchtitan's Trainer, and the model is built on the meta
device and converted by the ``rope_scaling`` converter. Nothing is allocated on a device. The
frequencies shown are the ones the converted model's ``init_weights`` will build
(``rope_frequencies`` of its section); "stock" is what torchtitan itself would build for the same job
(its own cache method, run on CPU and decoded).

The table and plot (``titan_rope_ext.tools.rope_bands``) are shared with torchtitan 0.3's inspect. A bad
job exits with status 2 and the same message as ``titan-rope train``.
"""

from __future__ import annotations

import sys

import torch

from titan_rope_ext.config import rope_frequencies, RopeScaling
from titan_rope_ext.tools.rope_bands import decode, Inspection, report, trained_length


def inspect_job(args: list[str]) -> Inspection:
    """Resolves ``args`` (torchtitan CLI arguments) like training does; raises ConfigError on a bad job."""
    from titan_rope_ext.torchtitan02.converter import NAME, RopeScalingConverter
    from titan_rope_ext.torchtitan02.launch.check import ConfigError, preflight
    from titan_rope_ext.torchtitan02.tools._job import model_args_for

    job = preflight(args)
    if NAME not in job.model.converters:
        raise ConfigError(f"model.converters = {job.model.converters} does not list {NAME!r}: nothing to inspect")
    spec, model_args = model_args_for(job)
    converter = RopeScalingConverter(job, parallel_dims=None)
    with torch.device("meta"):
        stock_model = spec.model_cls(model_args)
        model = spec.model_cls(model_args)
    try:
        converter.convert(model)
    except ValueError as e:
        raise ConfigError(str(e)) from e
    adapter, config = converter.adapter, converter.config
    head_dim = adapter.head_dim(model_args)
    theta = model_args.rope_theta
    seq_len = model_args.max_seq_len
    with torch.device("cpu"):
        stock, stock_factor = decode(adapter.stock_cache(stock_model), head_dim)
        inv_freq, attention_factor = rope_frequencies(config, head_dim, theta, seq_len)
        default, _ = rope_frequencies(RopeScaling(), head_dim, theta, seq_len)
    return Inspection(job.model.name, job.model.flavor, head_dim, theta, seq_len, config,
                      trained_length(config, seq_len), default.double(), stock, stock_factor,
                      inv_freq.double(), attention_factor)


def run(opts, overrides: list[str]) -> int:
    """``titan-rope inspect`` with parsed options (``config``, ``plot``) and torchtitan ``overrides``."""
    from titan_rope_ext.torchtitan02.launch.check import ConfigError

    return report(lambda: inspect_job(["--job.config_file", opts.config, *overrides]), opts.plot, ConfigError)


def main(argv: list[str] | None = None) -> int:
    """``python -m titan_rope_ext.torchtitan02.tools.inspect_rope ...`` = ``titan-rope inspect ...``."""
    import titan_rope_cli

    return titan_rope_cli.main(["inspect", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
