"""Real torchtitan 0.3 Trainer runs on CPU (marker ``integration``): ``titan-rope train`` for every method on the
llama3 debug flavor, qwen3 with YaRN, 2 ranks with FSDP2 over gloo, one RoPE cache per rank under FSDP2, TP and PP
(2 ranks, both ranks' logs) and under CP (forward only: ``cp_probe.py``), exact checkpoint resume, stock ``torchtitan.train`` with ``--override.imports`` and
with the converter, training past the cap, and the first loss after loading a transformers checkpoint
(``initial_load_in_hf``) against transformers' own."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STEP_RE = re.compile(r"step:\s*(\d+)\s+loss:\s*([-\d.naninf]+)")
CACHE_RE = re.compile(r"rope_scaling: rank (\d+): (\d+) RoPE layers share (\d+) cache storage\(s\): (.*)")
ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
OVERRIDE = "titan_rope_ext.torchtitan03.override.rope_scaling"
METHOD_FLAGS = {
    "default": ["--rope_scaling.rope_type", "default"],
    "linear": ["--rope_scaling.rope_type", "linear", "--rope_scaling.factor", "4"],
    "ntk": ["--rope_scaling.rope_type", "ntk", "--rope_scaling.factor", "4"],
    "dynamic": ["--rope_scaling.rope_type", "dynamic", "--rope_scaling.factor", "4",
                "--rope_scaling.original_max_position_embeddings", "32"],
    "yarn": ["--rope_scaling.rope_type", "yarn", "--rope_scaling.factor", "4",
             "--rope_scaling.original_max_position_embeddings", "32"],
    "llama3": ["--rope_scaling.rope_type", "llama3", "--rope_scaling.factor", "8", "--rope_scaling.low_freq_factor",
               "1", "--rope_scaling.high_freq_factor", "4", "--rope_scaling.original_max_position_embeddings", "32"],
    "longrope": ["--rope_scaling.rope_type", "longrope", "--rope_scaling.original_max_position_embeddings", "32",
                 "--rope_scaling.factor", "8",
                 "--rope_scaling.short_factor", *["1"] * 8, "--rope_scaling.long_factor", *["1", "2"] * 4],
}


@dataclass
class Run:
    returncode: int
    output: str

    @property
    def losses(self) -> dict[int, float]:
        return {int(s): float(v) for s, v in STEP_RE.findall(ANSI_RE.sub("", self.output))}

    def check(self, steps: int) -> "Run":
        assert self.returncode == 0, self.output[-6000:]
        losses = self.losses
        assert sorted(losses) == list(range(1, steps + 1)), self.output[-3000:]
        assert all(v == v and abs(v) < 1e3 for v in losses.values())  # finite
        assert losses[steps] < losses[1]  # learning
        return self


def small(dump: Path, steps: int = 3, seq_len: int = 128, batch: int = 2) -> list[str]:
    # decay_ratio 0: warmup then constant LR, so a shorter run follows the start of a longer one
    return ["--training.steps", str(steps), "--training.local_batch_size", str(batch), "--training.seq_len",
            str(seq_len), "--metrics.log_freq", "1", "--debug.seed", "0", "--lr_scheduler.warmup_steps", "2",
            "--lr_scheduler.decay_ratio", "0.0", "--dump_folder", str(dump)]


def titan_rope(*args: str, nproc: int = 1, timeout: int = 600) -> Run:
    proc = subprocess.run([sys.executable, "-m", "titan_rope_cli", "train", f"--nproc={nproc}", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout + proc.stderr)


def both_ranks(*args: str, timeout: int = 600) -> Run:
    """2 CPU ranks as ``titan-rope train --nproc 2`` starts them (torchrun, gloo, the package's rank entry), with
    both ranks' output (``titan-rope`` shows rank 0's only)."""
    env = dict(os.environ, TITAN_ROPE_CPU_WORKER="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                           "titan_rope_ext.torchtitan03.launch.worker", *map(str, args),
                           "--training.mixed_precision_param", "float32"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout + proc.stderr)


def cache_lines(run: Run) -> dict[int, tuple[int, int, str]]:
    """rank -> (RoPE layers, cache storages, rest of the line), from RopeTrainer's line after init."""
    return {int(r): (int(n), int(k), rest) for r, n, k, rest in CACHE_RE.findall(ANSI_RE.sub("", run.output))}


def stock_train(*args: str, timeout: int = 600) -> Run:
    """torchtitan's own ``train.py`` main in one CPU process: the package is imported first so its CPU shims
    (applied only with TITAN_ROPE_CPU_WORKER=1) precede torchtitan's device detection, as in titan-rope's ranks."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TITAN_ROPE_CPU_WORKER="1", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    code = ("import runpy, sys, titan_rope_ext; sys.argv = ['train', *sys.argv[1:]]; "
            "runpy.run_module('torchtitan.train', run_name='__main__', alter_sys=True)")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args), "--training.mixed_precision_param",
                           "float32"], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    return Run(proc.returncode, proc.stdout + proc.stderr)


@pytest.mark.parametrize("method", list(METHOD_FLAGS))
def test_every_method_trains_llama3_debug_through_titan_rope(method, tmp_path):
    run = titan_rope("--module", "llama3", "--config", "llama3_debugmodel", *METHOD_FLAGS[method],
                     *small(tmp_path)).check(steps=3)
    assert f"rope_scaling: llama3: rope_type={method}" in run.output
    assert "seq_len=128" in run.output
    # one rank: FSDP2 of degree 1, the Trainer's own parallelize; 6 layers, one complex64 (128, 8) cache
    assert cache_lines(run) == {0: (6, 1, "complex64 [128, 8] on cpu, 8192 bytes (one cache per layer, "
                                         "stock 0.3: 49152 bytes)")}


def test_qwen3_yarn_recipe_trains(tmp_path):
    run = titan_rope("--module", "titan_rope_ext.torchtitan03", "--config", "qwen3_debugmodel_yarn",
                     *small(tmp_path, batch=1)).check(steps=3)
    assert "rope_scaling: qwen3: rope_type=yarn factor=4.0 original_max_position_embeddings=64" in run.output
    assert "attention_factor=1.13863 (on cos and sin" in run.output


def test_two_ranks_fsdp2_over_gloo(tmp_path):
    run = titan_rope("--module", "llama3", "--config", "llama3_debugmodel", *METHOD_FLAGS["yarn"],
                     *small(tmp_path, batch=1), nproc=2).check(steps=3)
    assert "dp_shard=2" in run.output and "Applied FSDP to the model" in run.output


TWO_RANKS = {
    "fsdp": ["--parallelism.data_parallel_shard_degree", "2"],
    "tp": ["--parallelism.tensor_parallel_degree", "2", "--parallelism.data_parallel_shard_degree", "1"],
    "tp_dtensor": ["--parallelism.tensor_parallel_degree", "2", "--parallelism.data_parallel_shard_degree", "1",
                   "--parallelism.spmd_backend", "partial_dtensor"],
    "pp": ["--parallelism.pipeline_parallel_degree", "2", "--parallelism.data_parallel_shard_degree", "1",
           "--parallelism.pipeline_parallel_microbatch_size", "1", "--training.disable_cuda_graphs"],
}


@pytest.mark.parametrize("parallelism", list(TWO_RANKS))
def test_two_ranks_hold_one_rope_cache_each(parallelism, tmp_path):
    # What each rank holds after the Trainer's parallelize, to_empty and init_weights, from RopeTrainer's line.
    # fsdp: buffers are not sharded; tp: 0.3's default spmd_types backend, and partial_dtensor, where the cache
    # is a Replicate DTensor per layer (decoder_sharding.py), all aliasing one storage; pp: the interleaved
    # schedule puts 2 stages on each rank (6 layers: 1+2 / 2+1), each stage with its own cache.
    run = both_ranks("--module", "llama3", "--config", "llama3_debugmodel", *METHOD_FLAGS["yarn"],
                     *TWO_RANKS[parallelism], *small(tmp_path, steps=2))
    assert run.returncode == 0, run.output[-6000:]
    lines = cache_lines(run)
    assert sorted(lines) == [0, 1], run.output[-3000:]
    if parallelism == "pp":
        assert {r: line[:2] for r, line in lines.items()} == {0: (3, 2), 1: (3, 2)}
        assert all("model part 0: " in line[2] and ", model part 1: " in line[2] for line in lines.values())
        assert all(line[2].count("layers, 1 storage(s)") == 2 for line in lines.values())
    else:
        assert {r: line[:2] for r, line in lines.items()} == {0: (6, 1), 1: (6, 1)}
        dtensor = "(DTensor (Replicate(),))" in lines[0][2]
        assert dtensor == (parallelism == "tp_dtensor"), lines[0][2]
    assert sorted(run.losses) == [1, 2] and all(v == v for v in run.losses.values())


def test_two_ranks_context_parallel_read_one_full_cache_each(tmp_path):
    # CP cannot train on CPU (cp_probe.py says why); forward only through 0.3's CP pieces: each rank holds one
    # full-length cache (CP shards inputs and positions, never the cache) and its output rows are the model's
    import json

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "tests.torchtitan03.cp_probe"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, CP_PROBE_OUT=str(tmp_path)))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    ranks = {r["rank"]: r for r in (json.loads(f.read_text()) for f in sorted(tmp_path.glob("rank*.json")))}
    assert sorted(ranks) == [0, 1]
    # head-tail balancing: 4 chunks of 64 rows, rank 0 the first and last, rank 1 the middle two
    assert ranks[0]["rows"] == [*range(0, 64), *range(192, 256)] and ranks[1]["rows"] == list(range(64, 192))
    for r in ranks.values():
        assert (r["rope_modules"], r["unique_storages"], r["cache_rows"]) == (2, 1, 256)
        assert r["positions_are_the_rows"] and r["max_abs_diff"] < 1e-5


def test_checkpoint_resume_is_exact_and_holds_no_rope(tmp_path):
    from torch.distributed.checkpoint import FileSystemReader

    ckpt = ["--checkpoint.enable", "--checkpoint.interval", "2", "--checkpoint.no-last-save-model-only"]
    flags = ["--module", "llama3", "--config", "llama3_debugmodel", *METHOD_FLAGS["yarn"]]
    whole = titan_rope(*flags, *small(tmp_path / "whole", steps=4)).check(steps=4)
    titan_rope(*flags, *small(tmp_path / "resumed", steps=2), *ckpt).check(steps=2)
    resumed = titan_rope(*flags, *small(tmp_path / "resumed", steps=4), *ckpt)
    assert resumed.returncode == 0, resumed.output[-6000:]
    assert sorted(resumed.losses) == [3, 4]  # steps 1-2 came from the checkpoint
    assert resumed.losses == {s: whole.losses[s] for s in (3, 4)}
    keys = FileSystemReader(str(tmp_path / "resumed" / "checkpoint" / "step-2")).read_metadata().state_dict_metadata
    assert any(k.startswith("model.") or "layers" in k for k in keys) and not any("rope" in k for k in keys)


def test_stock_train_with_override_imports(tmp_path):
    run = stock_train("--module", "tests.torchtitan03.cpu_configs", "--config", "llama3_debugmodel",
                      "--override.imports", OVERRIDE + '={"rope_type": "yarn", "factor": 4, '
                      '"original_max_position_embeddings": 32}', *small(tmp_path)).check(steps=3)
    assert "rope_scaling (override): llama3: rope_type=yarn factor=4.0" in run.output
    assert "Applied 6 override(s)" in run.output


def test_past_the_flavor_cap(tmp_path):
    # the RoPE configs of cap128 say 128 positions: the converter (max_seq_len) and the section train at 256
    run = stock_train("--module", "tests.torchtitan03.cpu_configs", "--config", "llama3_debugmodel_converter_256",
                      *small(tmp_path / "converter", seq_len=256, batch=1)).check(steps=3)
    assert "rope_scaling (converter): llama3: rope_type=yarn" in run.output and "seq_len=256" in run.output
    run = titan_rope("--module", "tests.torchtitan03.cpu_configs", "--config", "llama3_debugmodel_cap128",
                     *METHOD_FLAGS["yarn"], *small(tmp_path / "section", seq_len=256, batch=1)).check(steps=3)
    assert "seq_len=256" in run.output
    # the override path cannot: stock update_from_config refuses before overrides run (the documented limit)
    run = stock_train("--module", "tests.torchtitan03.cpu_configs", "--config", "llama3_debugmodel_cap128",
                      "--override.imports", OVERRIDE + '={"rope_type": "yarn", "factor": 4, '
                      '"original_max_position_embeddings": 64}', *small(tmp_path / "override", seq_len=256))
    assert run.returncode != 0
    assert "Training sequence length 256 exceeds attention RoPE maximum supported sequence length 128" in run.output


def test_titan_rope_refuses_a_bad_job_before_any_rank_starts(tmp_path):
    pytest.importorskip("fla", reason="torchtitan's qwen3_5 (the refused model) imports flash-linear-attention")
    for nproc in (1, 2):
        run = titan_rope("--module", "tests.torchtitan03.cpu_configs", "--config", "qwen3_5_debugmodel", *small(tmp_path),
                         nproc=nproc, timeout=300)
        assert run.returncode == 2, run.output[-3000:]
        assert "titan-rope: error: rope_scaling on torchtitan 0.3 supports llama3" in run.output
        assert "Training starts" not in run.output and "Building device mesh" not in run.output


@pytest.mark.parametrize("model", ["llama3", "qwen3"])
def test_first_loss_after_initial_load_in_hf_equals_transformers(model, tmp_path):
    # A random transformers checkpoint with YaRN x4 (save_pretrained), loaded by the real Trainer through
    # checkpoint.initial_load_in_hf, its RoPE read from the same config.json: the step-1 loss (before any update)
    # equals transformers' loss on the same first batch (torchtitan's own dataloader; per-document positions, and
    # causal attention over the window as SDPA runs it on CPU).
    import torch
    import torch.nn.functional as F
    from torchtitan.config import ConfigManager
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    rope = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}
    torch.manual_seed(0)
    if model == "llama3":
        hf = LlamaForCausalLM(LlamaConfig(
            vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=16,
            num_key_value_heads=16, rms_norm_eps=1e-5, tie_word_embeddings=False, max_position_embeddings=128,
            rope_parameters=dict(rope, rope_theta=500000.0), attn_implementation="eager"))
    else:
        hf = Qwen3ForCausalLM(Qwen3Config(
            vocab_size=2048, hidden_size=256, intermediate_size=3072, num_hidden_layers=8, head_dim=128,
            num_attention_heads=16, num_key_value_heads=8, rms_norm_eps=1e-6, tie_word_embeddings=True,
            max_position_embeddings=128, rope_parameters=dict(rope, rope_theta=1e6), attn_implementation="eager"))
    hf_dir = tmp_path / "hf"
    hf.eval().save_pretrained(hf_dir)

    config = ConfigManager().parse_args(["--module", "titan_rope_ext.torchtitan03.jobs",
                                         "--config", f"{model}.{model}_debugmodel"])
    tokenizer = config.tokenizer.build(tokenizer_path=config.hf_assets_path)
    batch, labels = next(iter(config.dataloader.build(dp_world_size=1, dp_rank=0, tokenizer=tokenizer, seq_len=128,
                                                      local_batch_size=1)))
    with torch.no_grad():
        logits = hf(input_ids=batch["input"], position_ids=batch["positions"]).logits
    expected = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten()).item()

    run = titan_rope("--module", model, "--config", f"{model}_debugmodel", "--rope_scaling.hf_config",
                     hf_dir / "config.json", "--checkpoint.enable", "--checkpoint.initial_load_path", hf_dir,
                     "--checkpoint.initial_load_in_hf", *small(tmp_path / "run", steps=1, batch=1))
    assert run.returncode == 0, run.output[-6000:]
    assert "Loading from HF safetensors" in run.output and "attention_factor=1.13863" in run.output
    assert run.losses[1] == pytest.approx(expected, abs=1e-5)  # the log prints 5 decimals
