"""The converter under torchtitan's parallelisms (``tests/torchtitan02/gpu/parallel_runs.py``).

``gpu``-marked tests need 4 CUDA devices and skip elsewhere; the CPU tests check that every command
line of the run matrix parses with torchtitan's ConfigManager and that the parity corpus really
gives one sample per window, so the matrix cannot rot unnoticed between GPU sessions.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.torchtitan02.gpu import parallel_runs

needs_4_gpus = pytest.mark.skipif(torch.cuda.device_count() < 4, reason="needs 4 CUDA devices")


def test_parity_corpus_is_one_sample_per_window(tmp_path):
    from torchtitan.components.tokenizer import HuggingFaceTokenizer

    text = parallel_runs.parity_corpus(tmp_path, str(parallel_runs.REPO / "titan_rope_ext/assets/tokenizer"), 32, copies=4)
    tokens = HuggingFaceTokenizer(str(parallel_runs.REPO / "titan_rope_ext/assets/tokenizer")).encode(
        text, add_bos=True, add_eos=True)
    assert len(tokens) == 33  # seq_len + 1: torchtitan's window
    lines = (tmp_path / "train.jsonl").read_text().splitlines()
    assert len(lines) == 4 and len({json.loads(line)["text"] for line in lines}) == 1


def test_every_command_line_parses(tmp_path, monkeypatch):
    from torchtitan.config import ConfigManager

    import tests.torchtitan02.gpu.rope_probe  # noqa: F401  (registers the probe converter, as custom_import does)

    monkeypatch.chdir(parallel_runs.REPO)
    runs = parallel_runs.plan(tmp_path, 30)
    assert {r.layout for r in runs} >= set(parallel_runs.LAYOUTS)
    for run in runs:
        job = ConfigManager().parse_args(run.args)
        assert job.model.converters[-1] == "rope_probe", run.name
        assert ("rope_scaling" in job.model.converters) == (run.rope != "stock"), run.name
        if run.layout in parallel_runs.LAYOUTS:
            layout = parallel_runs.LAYOUTS[run.layout]
            assert job.training.local_batch_size * layout.dp == parallel_runs.GLOBAL_BATCH, run.name


def test_checks_catch_a_wrong_cache_and_a_loss_drift():
    def result(rope, layout, losses, digest, ngpu=4):
        return {"rc": 0, "model": "llama3", "rope": rope, "layout": layout, "ngpu": ngpu, "losses": losses,
                "probes": [{"rank": str(r), "part": "0", "buffer": "freqs_cis", "digest": digest(r)} for r in range(ngpu)]}

    same = {1: 8.0, 2: 7.0}
    results = {
        "llama3_stock_single": result("stock", "single", same, lambda r: "a", 1),
        "llama3_equiv_single": result("equiv", "single", same, lambda r: "a", 1),
        "llama3_stock_fsdp4": result("stock", "fsdp4", same, lambda r: "a"),
        "llama3_equiv_fsdp4": result("equiv", "fsdp4", {1: 8.0, 2: 7.00001}, lambda r: "a"),  # drift of 1e-5
        "llama3_yarn_single": result("yarn", "single", same, lambda r: "y", 1),
        "llama3_yarn_fsdp4": result("yarn", "fsdp4", {1: 8.0, 2: 7.1}, lambda r: "y" if r else "z"),  # rank 0 differs
    }
    failed = {(c["check"], c["name"]) for c in parallel_runs.check(results) if not c["ok"]}
    assert failed == {("stock==equiv", "llama3 fsdp4"), ("cache", "llama3_yarn_fsdp4"), ("vs single", "llama3 yarn fsdp4")}


@pytest.mark.gpu
@needs_4_gpus
def test_parallelisms_on_4_gpus(tmp_path):
    assert parallel_runs.main(["--out", str(tmp_path), "--steps", "30"]) == 0, (tmp_path / "results.md").read_text()
