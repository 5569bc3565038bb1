"""Checkpoints as safetensors files: tensors in the body, everything else as JSON in the
header's metadata. Loading executes no code (no pickle), and a file is written atomically.

A state is any nesting of dicts and lists whose leaves are tensors or JSON values (the
state_dicts of modules and optimizers, RNG states, counters). `save_state` stores every
tensor under its path ("model.G_A.stem_conv.1.weight", "optim_g.state.3.exp_avg") and the
rest of the tree, with each tensor replaced by {"__tensor__": path}, as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from exp2sim.fileio import atomic_path


def _split(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[_key(k), _split(v, f"{path}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def _key(k: Any) -> Any:
    # optimizer state dicts are keyed by parameter index: keep ints as ints
    if not isinstance(k, (str, int)):
        raise TypeError(f"cannot store a dict key of type {type(k).__name__}")
    return k


def _join(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: _join(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_state(path: str | Path, state: dict[str, Any], info: dict[str, Any]) -> None:
    """Write `state` (nested dict with tensors) and `info` (JSON-able: config, epoch...)
    to one safetensors file, atomically."""
    tensors: dict[str, torch.Tensor] = {}
    tree = {k: _split(v, k, tensors) for k, v in state.items()}
    metadata = {"tree": json.dumps(tree), "info": json.dumps(info)}
    with atomic_path(path) as tmp:
        tmp.write_bytes(save(tensors, metadata=metadata))


def read_info(path: str | Path) -> dict[str, Any]:
    """The JSON `info` of a checkpoint, without reading its tensors."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return json.loads(metadata["info"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not an exp2sim checkpoint ({exc})") from None


def load_state(
    path: str | Path, prefixes: tuple[str, ...] | None = None, device: str = "cpu"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read (state, info) back. With `prefixes`, only the top-level entries named there are
    read (e.g. one generator of a full training checkpoint)."""
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            metadata = f.metadata() or {}
            tree = json.loads(metadata["tree"])
            info = json.loads(metadata["info"])
            keep = set(tree) if prefixes is None else set(prefixes) & set(tree)
            missing = set(prefixes or ()) - set(tree)
            if missing:
                raise ValueError(f"{path}: checkpoint holds no {', '.join(sorted(missing))}")
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.split(".", 1)[0] in keep}
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not an exp2sim checkpoint ({exc})") from None
    return {k: _join(tree[k], tensors) for k in keep}, info
