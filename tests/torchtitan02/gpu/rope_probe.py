"""A model converter, ``rope_probe``, that reports the rotary cache every rank trains with.

Imported through torchtitan's own hook (``--experimental.custom_import tests.torchtitan02.gpu.rope_probe``) and
listed last in ``model.converters``. It changes nothing: after the first optimizer step (outside
any context-parallel region, so the cache is whole) it logs, for each model part of each rank, the
cache's name, shape, dtype and a BLAKE2 digest of its bytes. Equal digests mean bit-identical
caches: across the ranks of one run, and between a stock run and a converted one.

Works with the converter on or off (stock torchtitan), which is the point: it reads the buffer the
model's own forward reads.
"""

from __future__ import annotations

import hashlib
import os

import torch
from torch import nn
from torchtitan.protocols.model_converter import register_model_converter
from torchtitan.tools.logging import logger

NAME = "rope_probe"
BUFFERS = ("freqs_cis", "rope_cache")
LINE = "rope_probe: rank={rank} part={part} buffer={name} shape={shape} dtype={dtype} digest={digest}"


def digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().contiguous().cpu()
    if data.is_complex():
        data = torch.view_as_real(data)
    return hashlib.blake2b(data.view(torch.uint8).numpy().tobytes(), digest_size=12).hexdigest()


class RopeProbe:
    def __init__(self, job_config, parallel_dims):
        self.done = False

    def convert(self, model: nn.Module) -> None:
        return None

    def post_optimizer_hook(self, model: nn.Module | list[nn.Module]) -> None:
        if self.done:
            return
        self.done = True
        parts = model if isinstance(model, list) else [model]
        rank = int(os.environ.get("RANK", "0"))
        for index, part in enumerate(parts):
            for name in BUFFERS:
                cache = getattr(part, name, None)
                if isinstance(cache, torch.Tensor):
                    logger.info(LINE.format(rank=rank, part=index, name=name, shape=tuple(cache.shape),
                                            dtype=str(cache.dtype).removeprefix("torch."), digest=digest(cache)))


register_model_converter(RopeProbe, NAME)
