"""A Hugging Face model in, the extended model out: transformers computes what torchtitan trained.

Tiny random-weight HF models made by transformers (``titan_rope_ext.assets.tiny_hf``; attention sharpened so
a wrong RoPE shows) with the dims of torchtitan's llama3 and qwen3 debug flavors. The llama3 one has a
Llama-2-style config.json without rope_theta (transformers uses 10000, the flavor 500000), the qwen3 one
rope_theta 20000 (flavor 1e6). The check (``titan_rope_ext.tools.agreement``): max |logit difference| within
1e-4 of the logit scale and the same argmax wherever the top-2 margin is clear.

* HF in: torchtitan's Trainer (``titan-rope train``, ``checkpoint.initial_load_in_hf``, one step at lr 0 so the
  saved weights are the loaded ones, checked bitwise) and, for every method, that model converted by the
  job's [rope_scaling] (``from_hf_assets`` + the method's keys) against transformers reading the same
  method from a config.json, at 8x the original length. The section's math is the converter's in both the
  Trainer and here; the Trainer run is what loads the weights. Also in-process on a GQA, head_dim 64 Llama.
* Out: a YaRN 4x run from the HF weights, 2 steps (a full DCP checkpoint at step 1, ``last_save_in_hf`` at
  step 2); ``titan-rope export`` of step 1 and ``from_pretrained``; the step-2 HF folder gets the same
  config.json; every method's export of the HF-in weights, at lengths below, just past the original and at
  the trained one.
* Controls: the unconverted torchtitan model, and the export with the base config.json, fail the check.
* ``titan-rope export`` refuses bad input before any work and leaves nothing in ``--out``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.torchtitan02.integration.conftest import config, titan_rope
from titan_rope_ext.tools.agreement import agree

pytestmark = pytest.mark.integration

ORIGINAL = {"llama3": 64, "qwen3": 16}  # the HF base model's max_position_embeddings
HEAD_DIM = {"llama3": 16, "qwen3": 128}
THETA = {"llama3": None, "qwen3": 20000.0}  # None: no rope_theta in config.json (transformers: 10000)
TRANSFORMERS_THETA = {"llama3": 10000.0, "qwen3": 20000.0}


def method_keys(model: str) -> dict[str, dict]:
    """[rope_scaling] keys besides from_hf_assets (original_max_position_embeddings comes from the file)."""
    bands = HEAD_DIM[model] // 2
    return {
        "default": {},
        "linear": dict(factor=4.0),
        "ntk": dict(factor=4.0),
        "dynamic": dict(factor=4.0),
        "yarn": dict(factor=4.0),
        "llama3": dict(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0),
        "longrope": dict(short_factor=[1.0 + 0.1 * i / bands for i in range(bands)],
                         long_factor=[1.0 + 3.0 * i / bands for i in range(bands)], factor=4.0),
    }


METHODS = sorted(method_keys("llama3"))
MODELS = ("llama3", "qwen3")


def transformers_rope(model: str, method: str) -> dict:
    """The same method as transformers means it, for a config.json (theta left to transformers unless ntk)."""
    keys = method_keys(model)[method]
    if method == "ntk":  # no transformers type: plain RoPE with base theta * factor ** (d / (d - 2))
        d = HEAD_DIM[model]
        return {"rope_type": "default", "rope_theta": TRANSFORMERS_THETA[model] * keys["factor"] ** (d / (d - 2))}
    return {"rope_type": method, **keys}


def toml_value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else repr(v)


def job_toml(model: str, method: str, folder: Path) -> Path:
    """The shipped ``<model>_debug_yarn.toml`` with [rope_scaling] = from_hf_assets + the method's keys."""
    text = config("yarn", model).read_text()
    head, _, tail = text.partition("[rope_scaling]")
    keys = {"from_hf_assets": True, "rope_type": method, **method_keys(model)[method]}
    section = "[rope_scaling]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items()) + "\n"
    path = folder / f"{model}_{method}.toml"
    path.write_text(head + section + tail[tail.index("[optimizer]"):])
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_roundtrip")


@pytest.fixture(scope="module")
def hf_base(work) -> dict[str, Path]:
    from titan_rope_ext.assets.tiny_hf import make_tiny_hf_model

    return {m: make_tiny_hf_model(work / f"hf_{m}", m, max_position_embeddings=ORIGINAL[m], rope_theta=THETA[m])
            for m in MODELS}


def args_for(model: str, method: str, work: Path, hf_dir: Path, seq_len: int, *extra: str) -> list[str]:
    return ["--job.config_file", str(job_toml(model, method, work)), "--model.hf_assets_path", str(hf_dir),
            "--training.seq_len", str(seq_len), *extra]


def train_args(dump: Path) -> list[str]:
    return ["--checkpoint.enable", "--checkpoint.initial_load_in_hf", "--training.local_batch_size", "1",
            "--metrics.log_freq", "1", "--lr_scheduler.warmup_steps", "1",
            "--debug.seed", "0", "--job.dump_folder", str(dump)]


@pytest.fixture(scope="module")
def runs(work, hf_base):
    """``runs[model, kind]`` -> (Run, checkpoint folder), started on first use and shared by the module.

    kind 'in': one step at lr 0, a model-only DCP checkpoint of the loaded weights at step 1; 'trained': YaRN
    4x for 2 steps, a full DCP checkpoint at step 1 and the last_save_in_hf folder at step 2."""

    class Runs(dict):
        def __missing__(self, key):
            model, kind = key
            dump = work / f"run_{model}_{kind}"
            if kind == "in":
                extra = ["--training.steps", "1", "--optimizer.lr", "0", "--checkpoint.interval", "1"]
            else:
                extra = ["--training.steps", "2", "--checkpoint.interval", "1", "--checkpoint.last_save_in_hf"]
            run = titan_rope(*args_for(model, "yarn", work, hf_base[model], 4 * ORIGINAL[model]),
                             *train_args(dump), *extra).check()
            self[key] = (run, dump / "checkpoint")
            return self[key]

    return Runs()


# ---- both sides' logits ---------------------------------------------------------------------------------------

def tokens(seq_len: int, batch: int = 1) -> torch.Tensor:
    return torch.randint(2, 2048, (batch, seq_len), generator=torch.Generator().manual_seed(seq_len))


def torchtitan_model(args: list[str], checkpoint: Path | None = None, hf_weights: Path | None = None, convert=True):
    """The job's model as training builds it (meta, converter, init_weights) for training.seq_len positions,
    with weights from a DCP checkpoint or an HF safetensors file (through torchtitan's state-dict adapter)."""
    from titan_rope_ext.torchtitan02.launch.check import preflight
    from titan_rope_ext.torchtitan02.tools.evaluate import build_model
    from titan_rope_ext.tools.evaluation import load_checkpoint

    job = preflight(args)
    if not convert:
        job.model.converters = []
    model, _ = build_model(job, job.training.seq_len, torch.device("cpu"))
    if checkpoint is not None:
        load_checkpoint(model, str(checkpoint))
    if hf_weights is not None:
        from torchtitan.protocols.train_spec import get_train_spec

        sd_adapter = get_train_spec(job.model.name).state_dict_adapter(model.model_args, None)
        state = sd_adapter.from_hf(load_file(str(hf_weights)))
        model.load_state_dict(state, strict=False)  # strict=False: the rope cache is a non-persistent buffer
    return model.eval()


def transformers_model(folder: Path, rope: dict | None = None, work: Path | None = None):
    """``from_pretrained(folder)``; with ``rope``: the same weights under the folder's config.json plus that rope
    dict (the file's rope_theta kept, if it has one)."""
    from transformers import AutoModelForCausalLM

    if rope is not None:
        variant = work / f"{folder.name}_{abs(hash(json.dumps(rope, sort_keys=True)))}"
        variant.mkdir(exist_ok=True)
        cfg = json.loads((folder / "config.json").read_text())
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta")  # the base file's, if it has one
        cfg["rope_parameters"] = {"rope_theta": theta, **rope} if theta is not None else rope
        (variant / "config.json").write_text(json.dumps(cfg))
        if not (variant / "model.safetensors").exists():
            os.symlink(folder / "model.safetensors", variant / "model.safetensors")
        folder = variant
    return AutoModelForCausalLM.from_pretrained(folder).eval()


@pytest.fixture(scope="module")
def loaded(runs, hf_base, work):
    """``loaded(model)``: the unconverted torchtitan model holding the weights the Trainer loaded from HF (step 1 of
    the 'in' run), built once per model; ``converted`` gives each method its own converted copy."""
    cache = {}

    def get(model: str):
        if model not in cache:
            _, ckpt = runs[model, "in"]
            job = args_for(model, "yarn", work, hf_base[model], 8 * ORIGINAL[model])
            cache[model] = torchtitan_model(job, ckpt / "step-1", convert=False)
        return cache[model]

    return get


def converted(base, args: list[str]):
    """A copy of ``base`` converted by the job's [rope_scaling] (resolved as the Trainer's converter resolves it)
    for training.seq_len positions. The converter rebuilds the cache on the model's device; that this equals
    the Trainer's meta -> convert -> init_weights path is tested per model in tests/torchtitan02/models."""
    from titan_rope_ext.torchtitan02.converter import check_job
    from titan_rope_ext.torchtitan02.launch.check import preflight

    job = preflight(args)
    adapter, section = check_job(job)
    model = copy.deepcopy(base)
    model.model_args.max_seq_len = job.training.seq_len
    adapter.convert(model, section)
    return model.eval()


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return getattr(out, "logits", out)


def assert_agree(reference, candidate, what: str):
    result = agree(reference, candidate)
    print(f"{what}: {result}")
    assert result.ok, f"{what}: {result}"
    return result


def assert_differ(reference, candidate, what: str):
    result = agree(reference, candidate)
    print(f"{what} (control): {result}")
    assert result.max_abs_diff > 100 * result.rel_tol * result.scale and result.argmax_agreement < 0.75, str(result)
    return result


# ---- HF in --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS)
def test_trainer_loads_the_hf_weights(runs, hf_base, model):
    run, ckpt = runs[model, "in"]
    assert f"loading HF safetensors from --model.hf_assets_path: {hf_base[model]}" in run.output
    source = ("transformers' default for model_type 'llama'" if model == "llama3"
              else f"rope_theta of {hf_base[model] / 'config.json'}")
    assert f"theta={TRANSFORMERS_THETA[model]} ({source}" in run.output  # the converter's log line
    from titan_rope_ext.tools.hf_folder import check_checkpoint, load_model_tensors
    from torchtitan.protocols.train_spec import get_train_spec

    spec = get_train_spec(model)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in spec.model_cls(spec.model_args["debugmodel"]).state_dict().items()}
    loaded = load_model_tensors(str(ckpt / "step-1"), check_checkpoint(str(ckpt / "step-1"), shapes))
    hf = spec.state_dict_adapter(spec.model_args["debugmodel"], None).from_hf(
        load_file(str(hf_base[model] / "model.safetensors")))
    assert loaded.keys() == hf.keys() and all(torch.equal(loaded[k], hf[k]) for k in loaded)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_hf_in_gives_transformers_logits_at_8x(loaded, hf_base, work, model, method):
    seq_len = 8 * ORIGINAL[model]
    ids = tokens(seq_len)
    ours = logits(converted(loaded(model), args_for(model, method, work, hf_base[model], seq_len)), ids)
    theirs = logits(transformers_model(hf_base[model], transformers_rope(model, method), work), ids)
    assert_agree(theirs, ours, f"HF in, {model} {method} at {seq_len}")
    if method == "yarn":  # the control: torchtitan without the converter (llama3: its built-in scaling)
        assert_differ(theirs, logits(loaded(model), ids), f"HF in, {model} unconverted vs transformers yarn")


@pytest.mark.parametrize("method", METHODS)
def test_hf_in_gqa_head_dim_64(work, method):
    """A GQA Llama with head_dim 64 (no stock torchtitan flavor has it: built from model args, in process)."""
    from torchtitan.models.llama3 import Transformer, TransformerModelArgs
    from torchtitan.models.llama3.model.state_dict_adapter import Llama3StateDictAdapter

    from titan_rope_ext import RopeScaling
    from titan_rope_ext.assets.tiny_hf import make_tiny_hf_model
    from titan_rope_ext.torchtitan02.models.llama3 import ADAPTER
    from tests.torchtitan02.models.helpers import build

    hf_dir = work / "hf_gqa64"
    if not (hf_dir / "model.safetensors").exists():
        make_tiny_hf_model(hf_dir, "llama3", max_position_embeddings=32, rope_theta=None, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    args = TransformerModelArgs(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=2048, norm_eps=1e-5,
                                rope_theta=500000, max_seq_len=256)
    keys = dict(method_keys("llama3")[method])
    if method == "longrope":
        keys.update(short_factor=[1.0 + 0.1 * i / 32 for i in range(32)],
                    long_factor=[1.0 + 3.0 * i / 32 for i in range(32)])
    section = RopeScaling(hf_config=str(hf_dir / "config.json"), rope_type=method, **keys)
    model = build(Transformer, args, ADAPTER, section, device="meta")
    model.load_state_dict(Llama3StateDictAdapter(args, None).from_hf(load_file(str(hf_dir / "model.safetensors"))),
                          strict=False)
    rope = {"rope_type": method, **keys}
    if method == "ntk":
        rope = {"rope_type": "default", "rope_theta": 10000.0 * 4.0 ** (64 / 62)}
    ids = tokens(256)
    assert_agree(logits(transformers_model(hf_dir, rope, work), ids), logits(model.eval(), ids),
                 f"HF in, GQA head_dim 64 {method} at 8x")


# ---- out --------------------------------------------------------------------------------------------------------

def export_main(*args: str) -> int:
    from titan_rope_ext.torchtitan02.tools import export

    return export.main(list(map(str, args)))


@pytest.mark.parametrize("model", MODELS)
def test_trained_model_exports_and_transformers_computes_it(runs, loaded, hf_base, work, model):
    run, ckpt = runs[model, "trained"]
    losses = run.losses
    assert sorted(losses) == [1, 2] and all(math.isfinite(v) for v in losses.values())
    seq_len = 4 * ORIGINAL[model]
    job = args_for(model, "yarn", work, hf_base[model], seq_len)
    out = work / f"export_{model}_trained"
    assert export_main(*job, "--checkpoint", ckpt / "step-1", "--out", out) == 0  # a full checkpoint
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors",
                                                    "tokenizer.json", "tokenizer_config.json"]
    exported = json.loads((out / "config.json").read_text())
    assert exported["max_position_embeddings"] == seq_len and exported["rope_theta"] == TRANSFORMERS_THETA[model]
    assert exported["rope_parameters"] == {"rope_type": "yarn", "rope_theta": TRANSFORMERS_THETA[model],
                                           "factor": 4.0, "original_max_position_embeddings": ORIGINAL[model]}
    assert exported["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0,
                                        "original_max_position_embeddings": ORIGINAL[model]}
    trained = torchtitan_model(job, ckpt / "step-1")
    hf = transformers_model(out)
    for length in (ORIGINAL[model] // 2, seq_len):
        ids = tokens(length)
        ours = logits(trained, ids)
        assert_agree(ours, logits(hf, ids), f"out, {model} trained at {length}")
    # the model did train: the weights it started from (loaded from HF) give other logits
    assert_differ(ours, logits(converted(loaded(model), job), ids), f"out, {model} trained vs its HF start")
    # the control: the same weights with the base model's config.json (plain RoPE), as a user would copy it
    control = work / f"export_{model}_base_config"
    control.mkdir()
    shutil.copyfile(hf_base[model] / "config.json", control / "config.json")
    os.symlink(out / "model.safetensors", control / "model.safetensors")
    assert_differ(ours, logits(transformers_model(control), ids), f"out, {model} with the base config.json")


@pytest.mark.parametrize("model", MODELS)
def test_last_save_in_hf_folder_gets_the_same_config(runs, hf_base, work, model):
    run, ckpt = runs[model, "trained"]
    folder = ckpt / "step-2"
    assert f"titan-rope: wrote {folder / 'config.json'}" in run.output
    seq_len = 4 * ORIGINAL[model]
    job = args_for(model, "yarn", work, hf_base[model], seq_len)
    export_dir = work / f"export_{model}_trained"
    if not export_dir.exists():
        assert export_main(*job, "--checkpoint", ckpt / "step-1", "--out", export_dir) == 0
    assert json.loads((folder / "config.json").read_text()) == json.loads((export_dir / "config.json").read_text())
    assert (folder / "tokenizer.json").is_file()
    weights = next(folder.glob("model-*.safetensors"))
    ids = tokens(seq_len)
    assert_agree(logits(torchtitan_model(job, hf_weights=weights), ids), logits(transformers_model(folder), ids),
                 f"out, {model} last_save_in_hf step 2")


# every method on llama3; on qwen3 (same export code, 5x the bytes) longrope, whose transformers form depends on
# the input length (the trained-run tests export qwen3's yarn)
EXPORTS = [("llama3", m) for m in METHODS] + [("qwen3", "longrope")]


@pytest.mark.parametrize("model, method", EXPORTS)
def test_every_method_exports_exactly(runs, loaded, hf_base, work, model, method):
    _, ckpt = runs[model, "in"]  # a model-only checkpoint
    seq_len = 4 * ORIGINAL[model]
    job = args_for(model, method, work, hf_base[model], seq_len)
    out = work / f"export_{model}_{method}"
    assert export_main(*job, "--checkpoint", ckpt / "step-1", "--out", out) == 0
    ours_model, hf = converted(loaded(model), job), transformers_model(out)
    for length in (ORIGINAL[model] // 2, ORIGINAL[model] + 1, seq_len):  # transformers switches at the original
        ids = tokens(length)
        assert_agree(logits(ours_model, ids), logits(hf, ids), f"out, {model} {method} at {length}")
    shutil.rmtree(out)


# ---- refusals ---------------------------------------------------------------------------------------------------

def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_export_refuses_bad_input_and_leaves_nothing(runs, hf_base, work, capsys, monkeypatch):
    _, ckpt = runs["llama3", "in"]
    job = args_for("llama3", "yarn", work, hf_base["llama3"], 256)
    parent = work / "refusals"
    parent.mkdir()
    out = parent / "out"

    def refused(*args, message: str):
        assert export_main(*args) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert message in err, err
        assert not out.exists() and leftovers(parent) == []

    refused(*job, "--checkpoint", parent / "nope", "--out", out, message=f"--checkpoint '{parent / 'nope'}' is not a "
            "torchtitan DCP folder (no .metadata)")
    # a checkpoint of another model, and of another flavor of the same model
    qwen = args_for("qwen3", "yarn", work, hf_base["qwen3"], 128)
    refused(*qwen, "--checkpoint", ckpt / "step-1", "--out", out,
            message="no tensors for layers.0.attention.k_norm.weight")
    refused("--job.config_file", config("yarn"), "--model.flavor", "8B", "--checkpoint", ckpt / "step-1", "--out", out,
            message="no tensors for layers.10.attention.wk.weight")
    from titan_rope_ext.tools.hf_folder import check_checkpoint, ExportError

    shapes = {k: v.shape for k, v in torchtitan_model(job, convert=False).state_dict().items()}
    with pytest.raises(ExportError, match=r"norm.weight has shape \(256,\), the model \(512,\)"):
        check_checkpoint(str(ckpt / "step-1"), {**shapes, "norm.weight": torch.Size([512])})
    # a config.json whose dims contradict the flavor
    bad_assets = parent / "bad_assets"
    shutil.copytree(hf_base["llama3"], bad_assets)
    cfg = json.loads((bad_assets / "config.json").read_text())
    (bad_assets / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 4}))
    refused(*args_for("llama3", "yarn", work, bad_assets, 256), "--checkpoint", ckpt / "step-1", "--out", out,
            message=f"{bad_assets / 'config.json'}: num_key_value_heads = 4 contradicts the torchtitan model, "
                    "which has 16")
    # an --out that is not empty, unless --force
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert export_main(*job, "--checkpoint", ckpt / "step-1", "--out", out) == 2
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine" and leftovers(parent) == []
    # a failure while writing leaves --out as it was
    from titan_rope_ext.torchtitan02.tools import export

    def disk_full(*_):
        raise OSError("No space left on device")

    monkeypatch.setattr(export, "write_safetensors", disk_full)
    with pytest.raises(OSError):
        export_main(*job, "--checkpoint", ckpt / "step-1", "--out", out, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and leftovers(parent) == []
    monkeypatch.undo()
    assert export_main(*job, "--checkpoint", ckpt / "step-1", "--out", out, "--force") == 0
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file() and leftovers(parent) == []


def test_export_command_line_and_config_only(runs, hf_base, work, capsys):
    """``titan-rope export`` dispatches to the tool; --config-only refuses a folder without HF weights."""
    import titan_rope_cli

    _, ckpt = runs["llama3", "in"]
    job = args_for("llama3", "yarn", work, hf_base["llama3"], 256)
    assert titan_rope_cli.main(["export", *job, "--config-only", "--out", str(ckpt / "step-1")]) == 2
    assert "holds no .safetensors files" in capsys.readouterr().err
    assert not (ckpt / "step-1" / "config.json").exists()
