"""What the tools share: a parsed torchtitan job's model args, resolved as torchtitan's Trainer resolves them."""

from __future__ import annotations

import copy


def model_args_for(job, max_seq_len: int | None = None):
    """``(train_spec, model_args)`` for ``job``: the flavor's args after ``update_from_config(job)``, as the
    Trainer does, on a copy (torchtitan's registry entry stays untouched); ``max_seq_len`` overrides the
    training length (the number of cache rows)."""
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec(job.model.name)
    model_args = copy.deepcopy(spec.model_args[job.model.flavor])
    model_args.update_from_config(job)
    if max_seq_len is not None:
        model_args.max_seq_len = max_seq_len
    return spec, model_args
