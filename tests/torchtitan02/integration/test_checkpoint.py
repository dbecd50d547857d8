"""DCP checkpoints: resume equals an uninterrupted run, no rope tensor is saved, stock <-> converted interchange."""

from pathlib import Path

import pytest
import torch.distributed.checkpoint as dcp

from tests.torchtitan02.integration.conftest import checkpoint_args, config, REPO, short_run_args, titan_rope

pytestmark = pytest.mark.integration


def saved_keys(step_dir: Path) -> set[str]:
    return set(dcp.FileSystemReader(str(step_dir)).read_metadata().state_dict_metadata)


def first_half_then_resume(first_config, second_config, dump: Path):
    first = titan_rope("--job.config_file", first_config, *short_run_args(dump, 5), *checkpoint_args(5)).check()
    assert (dump / "checkpoint" / "step-5").is_dir()
    second = titan_rope("--job.config_file", second_config, *short_run_args(dump, 10), *checkpoint_args(5)).check()
    assert "Loading the checkpoint from" in second.output and "step-5" in second.output
    assert sorted(second.losses) == list(range(6, 11)), second.output[-3000:]
    return first, second


def test_resume_gives_the_uninterrupted_losses(runs, tmp_path):
    full = runs("yarn").check().losses
    first, second = first_half_then_resume(config("yarn"), config("yarn"), tmp_path)
    assert first.losses == {s: full[s] for s in range(1, 6)}
    assert second.losses == {s: full[s] for s in range(6, 11)}
    keys = saved_keys(tmp_path / "checkpoint" / "step-5")
    assert any(k.startswith("model.") or "tok_embeddings" in k for k in keys), sorted(keys)[:10]
    assert not [k for k in keys if "freqs" in k or "rope" in k]


@pytest.fixture(scope="module")
def stock_config(tmp_path_factory) -> Path:
    """configs/llama3_debug_llama3.toml without the converter: plain stock torchtitan llama3."""
    text = (REPO / "configs" / "llama3_debug_llama3.toml").read_text()
    head, _, tail = text.partition("[rope_scaling]")
    tail = tail[tail.index("[optimizer]"):]
    stock = (head + tail).replace('converters = ["rope_scaling"]', "converters = []")
    stock = stock.replace('custom_config_module = "titan_rope_ext.job_config"\n', "")
    path = tmp_path_factory.mktemp("stock") / "llama3_debug_stock.toml"
    path.write_text(stock)
    return path


def test_converted_checkpoint_resumes_in_stock_torchtitan(runs, stock_config, tmp_path):
    # the llama3 config holds torchtitan's built-in values, so both sides have the same cache
    full = runs("llama3").check().losses
    first, second = first_half_then_resume(config("llama3"), stock_config, tmp_path)
    assert "rope_scaling:" in first.output and "rope_scaling:" not in second.output
    assert first.losses == {s: full[s] for s in range(1, 6)}
    assert second.losses == {s: full[s] for s in range(6, 11)}


def test_stock_checkpoint_resumes_with_the_converter(runs, stock_config, tmp_path):
    full = runs("llama3").check().losses
    first, second = first_half_then_resume(stock_config, config("llama3"), tmp_path)
    assert "rope_scaling:" not in first.output and "rope_scaling: llama3 rope_type=llama3" in second.output
    # stock torchtitan and the stock-equivalent converted run train identically
    assert first.losses == {s: full[s] for s in range(1, 6)}
    assert second.losses == {s: full[s] for s in range(6, 11)}
    assert set(saved_keys(tmp_path / "checkpoint" / "step-5")) == set(
        saved_keys(tmp_path / "checkpoint" / "step-10"))
