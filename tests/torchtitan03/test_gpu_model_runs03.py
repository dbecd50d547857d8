"""The CPU part of ``scripts/gpu_model_runs03.sh`` (the runs themselves need a GPU: ``docs/gpu_model_runs03.md``).

Every command line the script would run (``PRINT_ONLY=1``) parses with torchtitan 0.3's ConfigManager (the eval line
with ``titan-rope``'s own parser and check), each stock-equivalent section gives, for the length the runs train at,
every layer stock's RoPE cache bit for bit and stock's float attributes of the attention (softmax scales), so a loss
difference on the GPU can only come from elsewhere; and ``scripts/summarize_runs03.py`` reads torchtitan's log lines.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
MODELS = ["llama3", "qwen3", "deepseek_v3", "gpt_oss", "muse_glimmer"]


@pytest.fixture(scope="module")
def commands() -> dict[str, list[str]]:
    """run name -> argv, as the script prints them with ``PRINT_ONLY=1``."""
    proc = subprocess.run(["bash", "scripts/gpu_model_runs03.sh"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PRINT_ONLY="1"), timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split(" ", 1) for line in proc.stdout.splitlines()]
    return {name: shlex.split(command) for name, command in lines}


def torchtitan_args(argv: list[str]) -> list[str]:
    assert argv[:6] == ["python3", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    assert argv[6:8] == ["-m", "torchtitan.train"]
    return argv[8:]


def test_the_script_runs_every_pair_and_yarn_for_every_model(commands):
    expected = []
    for m in MODELS:
        expected += [f"{m}_stock_eager", f"{m}_equiv_eager", f"{m}_yarn_eager"]
        expected += ["llama3_yarn_eval"] if m == "llama3" else []
        expected += [f"{m}_stock_compile", f"{m}_equiv_compile"]
    assert list(commands) == expected


def rope_caches_and_scales(model_config) -> list[tuple[torch.Tensor, dict]]:
    """Per attention layer: its RoPE cache (built on CPU) and the float attributes of the attention module (built
    on meta: the softmax scales stock computes in ``__init__``)."""
    from titan_rope_ext.torchtitan03.models import attentions

    out = []
    for _, _, attention in attentions(model_config):
        with torch.device("cpu"):
            cache = attention.rope.build().cache
        with torch.device("meta"):
            module = attention.build()
        out.append((cache, {k: v for k, v in vars(module).items() if isinstance(v, float)}))
    return out


@pytest.mark.parametrize("model", MODELS)
def test_every_command_line_parses_and_each_pair_is_stock_equivalent(commands, model):
    from torchtitan.config import ConfigManager
    from torchtitan.trainer import Trainer

    from titan_rope_ext.torchtitan03.tools._job import trained_model_config
    from titan_rope_ext.torchtitan03.trainer import RopeTrainer

    parsed = {name: ConfigManager().parse_args(torchtitan_args(argv))
              for name, argv in commands.items() if name.startswith(f"{model}_") and "torchtitan.train" in argv}
    assert len(parsed) == 5
    for mode in ("eager", "compile"):
        stock, equiv = parsed[f"{model}_stock_{mode}"], parsed[f"{model}_equiv_{mode}"]
        assert type(stock) is Trainer.Config and type(equiv) is RopeTrainer.Config
        assert stock.compile.enable == equiv.compile.enable == (mode == "compile")
        for section in ("training", "debug", "dataloader", "optimizer", "lr_scheduler", "activation_checkpoint"):
            assert getattr(stock, section) == getattr(equiv, section), section
        assert stock.hf_assets_path == equiv.hf_assets_path and Path(stock.hf_assets_path, "tokenizer.json").is_file()
        assert (stock.training.seq_len, stock.training.steps, stock.debug.seed, stock.debug.deterministic) == (
            256, 10, 0, True)
        stock.model_spec.model.update_from_config(config=stock)  # what Trainer.__init__ does to each
        ours = rope_caches_and_scales(trained_model_config(equiv))
        theirs = rope_caches_and_scales(stock.model_spec.model)
        assert len(ours) == len(theirs) > 0
        for (cache, scales), (stock_cache, stock_scales) in zip(ours, theirs):
            assert cache.shape[0] == 256 and torch.equal(cache, stock_cache)
            assert scales == stock_scales
    yarn = parsed[f"{model}_yarn_eager"]
    section = yarn.resolved_rope_scaling()
    assert (section.rope_type, section.factor, section.original_max_position_embeddings) == ("yarn", 4.0, 64)


def test_the_eval_line_reads_the_yarn_runs_checkpoint(commands):
    import titan_rope_cli
    from titan_rope_ext.torchtitan03.launch.check import preflight

    argv = commands["llama3_yarn_eval"]
    assert argv[:3] == ["python3", "-m", "titan_rope_cli"]
    _, opts, rest = titan_rope_cli.parse(argv[3:])
    config = preflight(rest)
    assert opts.command == "eval" and config.resolved_rope_scaling().describe().startswith(
        "rope_type=yarn factor=4.0 original_max_position_embeddings=64")
    train = commands["llama3_yarn_eager"]
    dump = train[train.index("--dump_folder") + 1]
    assert opts.checkpoint == f"{dump}/checkpoint/step-10" and "--checkpoint.enable" in train
    assert opts.lengths == "256,512,1024"


# ---- the summary ---------------------------------------------------------------------------------------------

def log(losses: list[float], memory: float = 1.02, rc: int = 0, rope: str | None = None) -> str:
    """A torchtitan 0.3 training log as the runs write it (ANSI colors included), ending with the script's rc line."""
    lines = ["[titan] 2026-12-02 15:50:48,119 - root - INFO - Applied SelectiveAC activation checkpointing"]
    if rope:
        lines.append(f"[titan] 2026-12-02 15:50:48,200 - root - INFO - rope_scaling: {rope}")
    lines += [f"[titan] 2026-12-02 15:50:52,852 - root - INFO - \x1b[31mstep: {s:2d}  \x1b[32mloss: {v:8.5f}  "
              f"\x1b[38;2;180;60;0mgrad_norm:  1.7421  \x1b[38;2;54;234;195mmemory: {memory:5.2f}GiB(4.35%)  "
              f"\x1b[34mtps: 53  \x1b[36mtflops: 0.00  \x1b[35mmfu: 0.00%\x1b[39m" for s, v in enumerate(losses, 1)]
    return "\n".join(lines + [f"rc={rc}"]) + "\n"


def test_the_summary_reads_torchtitans_log_lines(tmp_path):
    stock = [8.06348, 6.54024, 4.97820]
    (tmp_path / "llama3_stock_eager.log").write_text(log(stock))
    (tmp_path / "llama3_equiv_eager.log").write_text(log(stock, memory=1.05, rope="llama3: rope_type=llama3 ..."))
    (tmp_path / "llama3_stock_compile.log").write_text(log(stock))
    (tmp_path / "llama3_equiv_compile.log").write_text(log([8.06348, 6.54124], rc=124))  # cut after step 2
    (tmp_path / "llama3_yarn_eager.log").write_text(log([8.06348, 6.0, 5.5]))
    (tmp_path / "qwen3_stock_eager.log").write_text("Traceback ...\nrc=1\n")
    (tmp_path / "versions.txt").write_text("torch 2.14.0 | torchtitan 0.3.0 | NVIDIA H200")
    (tmp_path / "llama3_yarn_eval.log").write_text(
        "titan-rope eval: reading the job\nllama3 debugmodel, rope_type=yarn ..., checkpoint c\n"
        " length x trained sliding ppl  ppl by position bucket  passkey accuracy by depth 0 1\n"
        "    256         4      12.345    10.000 11.000  0.50 1.00\nwrote e/eval.json\nrc=0\n")
    proc = subprocess.run([sys.executable, "scripts/summarize_runs03.py", str(tmp_path), "--models", "llama3 qwen3",
                           "--md", str(tmp_path / "s.md"), "--json", str(tmp_path / "l.json")],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines()]
    assert ["llama3", "stock", "vs", "equiv", "off", "3", "0", "(identical)", "4.97820", "4.97820", "1.02", "/", "1.05",
            "0", "/", "0"] in rows
    assert ["llama3", "stock", "vs", "equiv", "on", "2", "1.00e-03", "4.97820", "6.54124", "1.02", "/", "1.02",
            "0", "/", "124"] in rows
    assert ["llama3", "yarn", "(falls)", "off", "3", "-", "4.97820", "8.06348", "->", "5.50000", "1.02", "/", "1.02",
            "0", "/", "0"] in rows
    assert ["qwen3", "stock", "vs", "equiv", "off", "0", "-", "failed", "(rc=1)", "not", "run", "-", "/", "-",
            "1", "/", "-"] in rows
    assert proc.stdout.startswith("torch 2.14.0 | torchtitan 0.3.0 | NVIDIA H200")
    assert "    256         4      12.345" in proc.stdout and "rc=0" in proc.stdout
    md = (tmp_path / "s.md").read_text()
    assert "| llama3 | stock vs equiv | on | 2 | 1.00e-03 | 4.97820 | 6.54124 | 1.02 / 1.02 | 0 / 124 |" in md
    runs = json.loads((tmp_path / "l.json").read_text())
    assert runs["llama3_equiv_eager"]["rope"] == "llama3: rope_type=llama3 ..."
    assert runs["llama3_equiv_eager"]["losses"] == {"1": 8.06348, "2": 6.54024, "3": 4.9782}
