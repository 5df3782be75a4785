"""Checkpoints: safetensors weights with their metadata, never pickle.

A checkpoint is ``NAME.safetensors`` holding the tensors and, in the safetensors header, a JSON
document (kind, task, dims, config, normaliser statistics, versions, step). The same JSON is
written beside it as ``NAME.json`` for people and tools. Loading parses only the safetensors
header and raw tensor bytes: nothing in the file is ever executed.

Writes are atomic: a temporary file in the same directory, fsync, then ``os.replace``. A crash
mid-write leaves the previous checkpoint intact.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from smiling_ros.errors import UserError

FORMAT = "smiling_ros.checkpoint/1"
_META_KEY = "smiling_ros"


def versions() -> dict[str, str]:
    import numpy
    import safetensors

    import smiling_ros

    return {
        "smiling_ros": smiling_ros.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "python": platform.python_version(),
    }


@dataclass
class Checkpoint:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "")

    def sub(self, prefix: str) -> dict[str, torch.Tensor]:
        """The tensors under ``prefix.`` with the prefix removed (a module's state_dict)."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}

    def require(self, kind: str | tuple[str, ...], obs_dim: Optional[int] = None, act_dim: Optional[int] = None,
                task: Optional[str] = None) -> "Checkpoint":
        """Refuse a checkpoint of another kind, dimension or task, naming the file."""
        kinds = (kind,) if isinstance(kind, str) else kind
        name = self.path or "checkpoint"
        if self.kind not in kinds:
            raise UserError(f"{name}: is a '{self.kind}' checkpoint, expected {' or '.join(kinds)}")
        for key, want in (("obs_dim", obs_dim), ("act_dim", act_dim)):
            have = self.meta.get(key)
            if want is not None and have is not None and int(have) != int(want):
                raise UserError(f"{name}: {key} is {have} but this robot/task has {want} (checkpoint of another task?)")
        if task and self.meta.get("task") and self.meta["task"] != task:
            raise UserError(f"{name}: trained for task '{self.meta['task']}', not '{task}'")
        return self


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write ``path`` (.safetensors) and its ``.json`` sidecar atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "versions": versions(), **meta}
    doc = json.dumps(meta, default=_json_default)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file(flat, tmp, metadata={_META_KEY: doc})
        _fsync(tmp)
        os.replace(tmp, path)
        _atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=1, default=_json_default))
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint without executing anything from it; clear one-line errors otherwise."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.is_dir():
        cands = sorted(path.glob("*.safetensors"))
        best = path / "policy.safetensors"
        path = best if best.exists() else (cands[-1] if cands else path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    with open(path, "rb") as f:
        head = f.read(16)
    # A safetensors file starts with an 8-byte header length, then its JSON header ('{'); the length's
    # first byte may be 0x80 like a pickle's, so only files without that header are suspected.
    looks_safetensors = len(head) >= 9 and head[8:9] == b"{"
    if not looks_safetensors and (head[:1] == b"\x80" or head[:2] == b"PK"):
        raise UserError(f"{path}: looks like a pickle/torch.save file; refusing to load it (only safetensors checkpoints are accepted)")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({str(exc).splitlines()[0]})") from None
    if _META_KEY not in header:
        raise UserError(f"{path}: safetensors file without smiling_ros metadata (not a smiling_ros checkpoint)")
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError:
        raise UserError(f"{path}: corrupt checkpoint metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{path}: unsupported checkpoint format {meta.get('format') if isinstance(meta, dict) else meta!r}")
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(f"{path}: tensor '{k}' contains NaN or inf")
    return Checkpoint(tensors, meta, path)


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (logs summaries, JSON results) atomically."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(p, text)
