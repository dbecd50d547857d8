"""What the torchtitan 0.3 tools share: a parsed job's model config, as training builds it."""

from __future__ import annotations


def trained_model_config(config):
    """``config``'s model config as training builds it (changed in place): ``RopeTrainer.__init__``'s swap
    (a ``RopeTrainer.Config``), then ``Trainer.__init__``'s ``update_from_config`` and ``--override.imports``."""
    from torchtitan.config import apply_overrides

    from titan_rope_ext.torchtitan03.models import scale_model
    from titan_rope_ext.torchtitan03.trainer import RopeTrainer

    spec = config.model_spec
    if isinstance(config, RopeTrainer.Config):
        scale_model(spec.model, config.resolved_rope_scaling(), max_seq_len=config.training.seq_len,
                    model_name=spec.name)
    spec.model.update_from_config(config=config)
    if config.override.imports:
        apply_overrides(config.override, config)
    return spec.model
