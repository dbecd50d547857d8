"""A Hugging Face model folder from a torchtitan DCP checkpoint, for either torchtitan line: checks, reading, writing.

Everything that does not depend on which torchtitan wrote the checkpoint: whether a DCP folder holds the
model's tensors (names and shapes), reading them on CPU, safetensors (sharded past 5 GB), config.json and
tokenizer files written under temporary names and renamed, and the folder itself built in a temporary
directory beside ``--out`` and renamed at the end, so a failure leaves nothing in ``--out``. Each line's
``tools/export.py`` supplies the model, its state-dict adapter and the config.json
(``titan_rope_ext.hf_export``).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
MAX_SHARD_BYTES = 5 * 1024**3
# keys of a full torchtitan checkpoint that are not the model's
_TRAINING_STATE = ("optimizer", "lr_scheduler", "dataloader", "train_state")


class ExportError(ValueError):
    pass



def check_checkpoint(path: str, shapes: dict[str, torch.Size]) -> dict[str, torch.dtype]:
    """The stored dtype of each model tensor; ExportError naming the path and the first mismatch when the
    checkpoint is missing or holds another model or flavor (names or shapes)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    if not Path(path, ".metadata").is_file():
        raise ExportError(f"--checkpoint {path!r} is not a torchtitan DCP folder (no .metadata)")
    stored = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    if missing := sorted(k for k in shapes if k not in stored):
        more = " ..." if len(missing) > 3 else ""
        raise ExportError(f"--checkpoint {path}: no tensors for {', '.join(missing[:3])}{more} "
                          "(a checkpoint of another model or flavor?)")
    extra = sorted(k for k in stored if k not in shapes and not k.startswith(_TRAINING_STATE))
    if extra:
        raise ExportError(f"--checkpoint {path}: tensors the model lacks: {', '.join(extra[:3])}"
                          f"{' ...' if len(extra) > 3 else ''} (a checkpoint of another model or flavor?)")
    dtypes = {}
    for key, shape in shapes.items():
        meta = stored[key]
        if not isinstance(meta, TensorStorageMetadata) or meta.size != shape:
            got = tuple(meta.size) if isinstance(meta, TensorStorageMetadata) else type(meta).__name__
            raise ExportError(f"--checkpoint {path}: {key} has shape {got}, the model {tuple(shape)} "
                              "(a checkpoint of another flavor?)")
        dtypes[key] = meta.properties.dtype
    return dtypes



def check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {str(out)!r} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ExportError(f"--out {str(out)!r} exists and is not empty; pass --force to replace it")



def load_model_tensors(path: str, dtypes: dict[str, torch.dtype]) -> dict[str, torch.Tensor]:
    """The model's tensors from a DCP folder (full or model-only), in their stored dtypes, on CPU."""
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    state = {k: torch.empty(tuple(metadata[k].size), dtype=dtype) for k, dtype in dtypes.items()}
    with warnings.catch_warnings():  # "torch.distributed is disabled ... load in a single process": intended
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(state, checkpoint_id=path)
    return state



def write_safetensors(tensors: dict[str, torch.Tensor], folder: Path) -> list[str]:
    """``model.safetensors``, or shards of at most 5 GB and ``model.safetensors.index.json``; returns the file names."""
    from safetensors.torch import save_file

    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, value in tensors.items():
        nbytes = value.numel() * value.element_size()
        if shards[-1] and size + nbytes > MAX_SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(folder / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(folder / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return [*names, "model.safetensors.index.json"]


def as_written(hf_state: dict[str, torch.Tensor], dtype: str, tie_word_embeddings: bool) -> dict[str, torch.Tensor]:
    """A state-dict adapter's ``to_hf`` output as the export writes it: in ``dtype`` (a ``DTYPES`` key), contiguous,
    no two tensors sharing storage (safetensors refuses it); with ``tie_word_embeddings`` without ``lm_head.weight``
    (transformers ties it to the embedding itself), which must then equal the embedding."""
    out, seen = {}, set()
    for key, value in hf_state.items():
        value = value.to(DTYPES[dtype]).contiguous()
        if value.untyped_storage().data_ptr() in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        out[key] = value
    if tie_word_embeddings and "lm_head.weight" in out:
        head, embedding = out.pop("lm_head.weight"), out["model.embed_tokens.weight"]
        if not head.is_meta and not torch.equal(head, embedding):
            raise ExportError("the checkpoint's output weight differs from its embedding, but the model ties them "
                              "(tie_word_embeddings); export the untied flavor")
    return out


def tokenizer_files(assets: str | None) -> list[Path]:
    """The tokenizer files (and generation_config.json) found in a model's HF assets folder."""
    if not assets:
        return []
    return [Path(assets, f) for f in TOKENIZER_FILES if Path(assets, f).is_file()]


def write_config_and_tokenizer(config: dict, tokenizer: list[Path], folder: Path) -> list[str]:
    """config.json and the tokenizer files into ``folder``, each written to a temporary name and renamed."""
    written = []
    for name, write in [("config.json", lambda p: p.write_text(json.dumps(config, indent=2) + "\n"))] + [
            (src.name, lambda p, src=src: shutil.copyfile(src, p)) for src in tokenizer]:
        tmp = folder / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, folder / name)
        written.append(name)
    return written


def write_folder(out: Path, force: bool, fill: Callable[[Path], list[str]]) -> list[str]:
    """Builds the folder ``out`` with ``fill(tmp)`` in a temporary directory beside it and renames it into place
    (replacing an empty ``out``, or a full one with ``force``); nothing is left in ``out`` if ``fill`` fails."""
    check_out(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        files = fill(tmp)
        if out.exists():  # empty, or --force
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / "out")
            os.rename(tmp, out)
            shutil.rmtree(old)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files
