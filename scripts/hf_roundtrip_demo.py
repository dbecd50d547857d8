"""A Hugging Face model in, YaRN 4x fine-tuning in torchtitan, the extended model out, checked with transformers.

    python scripts/hf_roundtrip_demo.py [--out outputs/hf_roundtrip_demo] [--steps 6]

CPU only, about a minute on two cores; nothing is downloaded:

1. transformers makes a tiny random Llama (the dims of torchtitan's llama3 debug flavor, 64 positions,
   plain RoPE) and saves it with ``save_pretrained`` (``titan_rope_ext.assets.tiny_hf``);
2. ``titan-rope train`` loads it (``checkpoint.initial_load_in_hf``), extends it 4x with YaRN
   (``[rope_scaling] from_hf_assets = true`` + ``rope_type = "yarn"``, ``factor = 4.0``: theta and the
   original length come from the model's config.json) and fine-tunes at 256 tokens; the last step is
   saved in HF format (``last_save_in_hf``), the one before as a DCP checkpoint;
3. ``titan-rope export`` turns the DCP checkpoint into a Hugging Face folder;
4. transformers' ``from_pretrained`` of that folder, and of the ``last_save_in_hf`` folder, against the
   torchtitan model's logits at 32, 64 and 256 tokens; then the same weights with the base model's
   config.json (what users copied before), which is wrong past nothing but RoPE.

Prints the logit agreement of each; exits 1 if an export disagrees or the control does not.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

JOB = """\
[job]
dump_folder = "{out}/run"
description = "tiny HF Llama, YaRN 4x (64 -> 256), fine-tuned and exported"
custom_config_module = "titan_rope_ext.job_config"

[model]
name = "llama3"
flavor = "debugmodel"
hf_assets_path = "{out}/base"        # the HF model: weights, config.json, tokenizer
converters = ["rope_scaling"]

[rope_scaling]
from_hf_assets = true                # theta and the original length (64) from base/config.json
rope_type = "yarn"
factor = 4.0

[optimizer]
name = "AdamW"
lr = 2e-4

[lr_scheduler]
warmup_steps = 2

[training]
local_batch_size = 2
seq_len = 256
steps = {steps}
dataset = "c4_test"
dataset_path = "{repo}/titan_rope_ext/assets/corpus"

[checkpoint]
enable = true
initial_load_in_hf = true            # start from base/model.safetensors
interval = {interval}                     # a DCP checkpoint one step before the end
last_save_in_hf = true               # the last step as safetensors (+ config.json from titan-rope train)

[metrics]
log_freq = 1
disable_color_printing = true
"""


def run(cmd: list[str]) -> str:
    print("$ " + " ".join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stdout[-3000:] + proc.stderr[-5000:])
    return proc.stdout + proc.stderr


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "outputs" / "hf_roundtrip_demo"), help="work folder (replaced)")
    parser.add_argument("--steps", type=int, default=6, help="fine-tuning steps (>= 2)")
    opts = parser.parse_args()
    out = Path(opts.out).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    import torch
    from transformers import AutoModelForCausalLM

    from titan_rope_ext.assets.tiny_hf import make_tiny_hf_model
    from titan_rope_ext.tools.agreement import agree

    print(f"1. a tiny random HF Llama (64 positions, plain RoPE) -> {out / 'base'}")
    make_tiny_hf_model(out / "base", "llama3", max_position_embeddings=64, rope_theta=10000.0)
    job = out / "job.toml"
    job.write_text(JOB.format(out=out, repo=REPO, steps=opts.steps, interval=opts.steps - 1))

    print("2. load it in torchtitan, extend it 4x with YaRN, fine-tune")
    log = run([sys.executable, "-m", "titan_rope_cli", "train", "--job.config_file", str(job)])
    for line in log.splitlines():
        if "rope_scaling:" in line or " step: " in line or line.startswith("titan-rope: wrote"):
            print("   " + line.split(" - INFO - ")[-1])
    checkpoints = out / "run" / "checkpoint"
    dcp_step, hf_step = checkpoints / f"step-{opts.steps - 1}", checkpoints / f"step-{opts.steps}"

    print("3. export the DCP checkpoint as a Hugging Face folder")
    run([sys.executable, "-m", "titan_rope_cli", "export", "--job.config_file", str(job), "--checkpoint",
         str(dcp_step), "--out", str(out / "hf")])

    print("4. transformers against torchtitan")
    from titan_rope_ext.torchtitan02.launch.check import preflight
    from titan_rope_ext.torchtitan02.tools.evaluate import build_model
    from titan_rope_ext.tools.evaluation import heldout_stream, load_checkpoint

    parsed = preflight(["--job.config_file", str(job)])
    model, tokenizer = build_model(parsed, parsed.training.seq_len, torch.device("cpu"))
    load_checkpoint(model, str(dcp_step))
    control = out / "hf_with_base_config"
    control.mkdir()
    shutil.copyfile(out / "base" / "config.json", control / "config.json")
    shutil.copyfile(out / "hf" / "model.safetensors", control / "model.safetensors")

    text = heldout_stream(tokenizer, 256, seed=1)[None]
    ok = True
    with torch.no_grad():
        for name, folder, expect in [("titan-rope export", out / "hf", True),
                                     ("export + base config.json (control)", control, False),
                                     ("last_save_in_hf folder", hf_step, None)]:
            hf_model = AutoModelForCausalLM.from_pretrained(folder).eval()
            if expect is None:  # the last step's weights: compare with torchtitan holding those weights
                from safetensors.torch import load_file
                from torchtitan.protocols.train_spec import get_train_spec

                sd_adapter = get_train_spec("llama3").state_dict_adapter(model.model_args, None)
                weights = load_file(str(next(folder.glob("model-*.safetensors"))))
                model.load_state_dict(sd_adapter.from_hf(weights), strict=False)
                expect = True
            for length in (32, 64, 256):
                result = agree(model(text[:, :length]), hf_model(text[:, :length]).logits)
                print(f"   {name:37s} {length:3d} tokens: {result}")
                ok &= result.ok == expect
    print("OK: transformers computes what torchtitan trained" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
