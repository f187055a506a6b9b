"""Checkpoints: safetensors weights with a JSON record of their sha256 beside them, written atomically.

Loading checks the file against its record first, so a truncated or tampered file is refused, and safetensors
holds tensors only: nothing runs on load (a pickled checkpoint can run any code, see notebook 06).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from labkit.core import cache


def save_checkpoint(model: torch.nn.Module, path: str | Path, meta: dict) -> dict:
    """Save weights as safetensors and a JSON metadata file holding their sha256; both written atomically."""
    from safetensors.torch import save as st_save

    path = _weights_path(path)
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict of what to record beside the weights, got {type(meta).__name__}.")
    try:  # before anything is written: a record that cannot be saved must not leave weights behind
        json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise TypeError(f"meta must hold JSON values only (numbers, strings, lists, dicts): {err}. Convert the "
                        "others first, e.g. float(x) or x.tolist().") from None
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = st_save(state)
    meta = dict(meta, sha256=hashlib.sha256(payload).hexdigest(), bytes=len(payload))
    cache.atomic_write_bytes(path, payload)
    # The metadata goes last: a crash between the two leaves weights without a matching record -> retrain.
    cache.atomic_write_bytes(path.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True).encode())
    return meta


def _weights_path(path: str | Path) -> Path:
    """`path` as a Path; a ValueError unless it names a .safetensors file (its record goes beside it as .json)."""
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path must be a file path (str or Path), got {type(path).__name__}.")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a checkpoint's weights file ends in .safetensors (its record is saved beside it as "
                         f".json): pass {path.with_suffix('.safetensors')}.")
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load safetensors weights after checking them against the sha256 in their metadata file."""
    path = _weights_path(path)
    meta = checked_meta(path)
    return load_file(str(path)), meta


def checked_meta(path: str | Path) -> dict:
    """The metadata of the safetensors weights at `path`, after checking the file against its sha256."""
    path = _weights_path(path)
    meta_path = path.with_suffix(".json")
    for p in (path, meta_path):
        if p.exists() and not p.is_file():
            raise ValueError(f"{p} is a folder, not a checkpoint file: delete it and rebuild the checkpoint.")
    if not path.is_file() or not meta_path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path} (or its metadata {meta_path.name}).")
    for p in (path, meta_path):
        why = cache.unreadable(p)
        if why:
            raise PermissionError(f"{why}: run `python -m labkit prepare` again where it was written (it writes "
                                  f"files readable by all), or `chmod a+r {p}`.")
    meta = _record(meta_path)
    actual = cache.file_sha256(path)
    if actual != meta["sha256"]:
        raise ValueError(f"{path} does not match the sha256 recorded in {meta_path.name} "
                         f"(truncated or tampered); delete it and rebuild it.")
    check_safetensors(path)
    return meta


def _record(meta_path: Path) -> dict:
    """The JSON record beside a checkpoint, refused unless it is an object holding the weights' sha256 and size."""
    fix = f"delete {meta_path} and its weights, and rebuild the checkpoint (`python -m labkit prepare` for the baseline)"
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_path} is not valid JSON ({err}): {fix}.") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} holds a JSON {type(meta).__name__}, not a checkpoint record (an object): "
                         f"{fix}.")
    sha = meta.get("sha256")
    if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError(f"{meta_path} has no sha256 of its weights (saw {sha!r}): {fix}.")
    return meta


def check_safetensors(path: Path) -> None:
    """A ValueError unless `path` starts like a safetensors file (a header length, then a JSON object that fits)."""
    # Checked before safetensors parses it: a pickle or any other file gets a message, not "header too large".
    with open(path, "rb") as f:
        head = f.read(9)
        size = os.fstat(f.fileno()).st_size
    length = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    if not (0 < length <= size - 8 and head[8:9] == b"{"):
        raise ValueError(f"{path} is not a safetensors file (a pickle or another format); labkit loads only "
                         "safetensors: delete it and rebuild the checkpoint.")


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def read_weights_into(model: torch.nn.Module, path: Path) -> torch.nn.Module:
    """Fill `model`'s parameters and buffers in place from the safetensors file at `path`; returns `model`.

    load_file + load_state_dict holds a second copy of every weight beside the model's while it loads (a peak
    twice the model); reading one tensor at a time (safetensors' safe_open) and copying it into the model's own
    storage adds only the largest tensor, which matters on a classroom hub (1-2 GB for the kernel and Jupyter
    together). Names, shapes and dtypes are all checked before anything is written.
    """
    check_safetensors(path)
    own = model.state_dict()
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        missing, unexpected = sorted(set(own) - names), sorted(names - set(own))
        if missing or unexpected:
            raise ValueError(f"{path} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
                             "it was saved from another architecture: delete it and rebuild it.")
        for name in names:
            info, dst = f.get_slice(name), own[name]
            if _SAFETENSORS_DTYPES.get(info.get_dtype()) != dst.dtype or list(dst.shape) != list(info.get_shape()):
                raise ValueError(f"{name} in {path} is {info.get_dtype()} {info.get_shape()}, the model's is "
                                 f"{dst.dtype} {list(dst.shape)}: delete the file and rebuild it.")
        with torch.no_grad():
            for name in names:
                own[name].copy_(f.get_tensor(name))
    return model
