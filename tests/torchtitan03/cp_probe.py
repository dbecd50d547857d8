"""Context parallelism on 2 CPU ranks, forward only: each rank's RoPE cache is one full-length storage, read at the
rank's shard of positions. Run by ``test_training.py`` under ``torchrun --nproc-per-node 2``; each rank writes its
JSON report to ``$CP_PROBE_OUT/rank<N>.json`` (one file per rank: two ranks printing to one pipe can interleave).

0.3's CP cannot train on CPU (FlexAttention has no CPU backward; SDPA + CP is refused or has no CPU sharding rule),
so this runs the pieces a CP step uses: ``apply_cp_to_forward`` on the inner attentions of the meta model (as
``parallelize_llama`` does), ``to_empty`` / ``init_weights``, and ``prepare_context_parallel_input`` (the Trainer's
sharding of inputs and positions, head-tail load balancing), then compares each rank's output rows with the
un-sharded model's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torchtitan.distributed.context_parallel import apply_cp_to_forward, prepare_context_parallel_input

from tests.torchtitan03.helpers import build, model_config, section
from titan_rope_ext.torchtitan03.cache_share import rope_cache_report
from titan_rope_ext.torchtitan03.models import scale_model

SEQ, DOC = 256, 96


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("cp",))
    config = model_config("llama3", n_layers=2)
    scale_model(config, section("yarn", 16), max_seq_len=SEQ)
    reference = build(config)
    with torch.device("meta"):
        model = config.build()
    apply_cp_to_forward([block.attention.inner_attention for block in model.layers.values()], mesh)
    model.to_empty(device="cpu")
    model.init_weights(buffer_device=None)
    model.load_state_dict(reference.state_dict())

    tokens = torch.randint(0, config.vocab_size, (1, SEQ), generator=torch.Generator().manual_seed(0))
    index = torch.arange(SEQ).unsqueeze(0)  # sharded as the labels are: which rows this rank holds
    positions = (torch.arange(SEQ) % DOC).unsqueeze(0)  # packed documents
    masks = reference.get_attention_masks(positions=positions)
    with torch.no_grad():
        expected = reference(tokens, positions=positions, attention_masks=masks)
        shard, rows, extra = prepare_context_parallel_input(
            tokens, index, {"positions": positions, "attention_masks": masks}, mesh, torch.device("cpu"), "headtail")
        out = model(shard, positions=extra["positions"], attention_masks=extra["attention_masks"])
    out = out.to_local() if hasattr(out, "to_local") else out
    report = rope_cache_report(model)
    result = {
        "rank": dist.get_rank(), "rope_modules": report["rope_modules"], "unique_storages": report["unique_storages"],
        "cache_rows": report["shape"][0], "rows": rows[0].tolist(),
        "positions_are_the_rows": bool(torch.equal(extra["positions"], positions[:, rows[0]])),
        "max_abs_diff": (out - expected[:, rows[0]]).abs().max().item()}
    (Path(os.environ["CP_PROBE_OUT"]) / f"rank{dist.get_rank()}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
