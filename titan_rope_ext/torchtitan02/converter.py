"""The ``rope_scaling`` model converter for torchtitan 0.2.x.

Shaped like torchtitan's float8 converter: validates in ``__init__``, changes the model in
place in ``convert`` (on the meta-device model the Trainer builds), refuses to convert a
model twice, logs one line with the effective parameters, and registers itself at import.
"""

from __future__ import annotations

from torch import nn
from torchtitan.protocols.model_converter import register_model_converter
from torchtitan.tools.logging import logger

from titan_rope_ext.config import RopeScaling
from titan_rope_ext.torchtitan02.models import adapter_for, Adapter

NAME = "rope_scaling"


def check_job(job_config) -> tuple[Adapter, RopeScaling]:
    """Everything about a job that can be checked without building the model.

    Finds the adapter for ``model.name``'s model class and checks the section against the
    flavor's head_dim. Raises ValueError naming the key and value. Used by the converter
    and by ``titan-rope train`` before it launches anything.

    ``apply = "fused_cacheless"`` with ``parallelism.context_parallel_degree > 1`` is refused: the model's
    rotary buffer then holds ``inv_freq`` (``head_dim // 2`` frequencies), but torchtitan 0.2 hands that
    buffer to torch's ``context_parallel`` as a sequence-sharded one (``cp_buffers=[inputs, labels] +
    [m.freqs_cis for m in model_parts]``, ``cp_seq_dims`` 0 for it): 0.2.0's train step does, and 0.2.2's
    train step no longer does (it shards ``positions``) but its validator (``components/validate.py``)
    still does. Sharded, ``inv_freq`` would lose frequencies on every rank; ``apply = "fused"`` keeps a
    cache with rows to shard.
    """
    from torchtitan.protocols.train_spec import get_train_spec

    config = getattr(job_config, NAME, None)
    if not isinstance(config, RopeScaling):
        raise ValueError(
            f"model.converters lists {NAME!r} but the job config has no [{NAME}] section; "
            f'set [job] custom_config_module = "titan_rope_ext.job_config"'
        )
    config = config.resolve_hf_assets(job_config.model.hf_assets_path)
    if config.apply == "fused_cacheless" and (cp := job_config.parallelism.context_parallel_degree) > 1:
        raise ValueError(f"rope_scaling.apply = 'fused_cacheless' cannot run with parallelism.context_parallel_degree "
                         f"= {cp} on torchtitan 0.2 (its context parallelism shards the model's rotary buffer along "
                         f"the sequence, and the cacheless buffer is inv_freq, with no rows); use apply = 'fused'")
    spec = get_train_spec(job_config.model.name)
    adapter = adapter_for(spec.model_cls, job_config.model.name)
    model_args = spec.model_args.get(job_config.model.flavor)
    if model_args is not None:
        config.check_head_dim(adapter.head_dim(model_args))
    return adapter, config


class RopeScalingConverter:
    """Replaces how the model computes its rotary cache by the ``[rope_scaling]`` method.

    The cache stays the model's own non-persistent buffer (``freqs_cis`` for llama3), so
    checkpoints never contain it and torchtitan's parallelisms see an unchanged model. With
    ``apply = "fused_cacheless"`` that buffer holds ``inv_freq`` instead of a cache (``models/_fused.py``).
    """

    def __init__(self, job_config, parallel_dims):
        self.adapter, self.config = check_job(job_config)
        self.training_seq_len = job_config.training.seq_len

    def convert(self, model: nn.Module) -> None:
        summary = self.adapter.convert(model, self.config)
        logger.info(f"{NAME}: {self.adapter.name} {self.config.describe()}; {summary}")
        seq_len = model.model_args.max_seq_len
        if seq_len == self.training_seq_len and (warning := self.config.extrapolation_warning(seq_len)):
            logger.warning(f"{NAME}: {warning}")  # (the tools build longer models on purpose)
        if self.config.hf_overrides:
            logger.info(f"{NAME}: keys set in [{NAME}] override {self.config.hf_config}: "
                        + ", ".join(self.config.hf_overrides))

    def post_optimizer_hook(self, model: nn.Module | list[nn.Module]) -> None:
        return None


register_model_converter(RopeScalingConverter, NAME)
