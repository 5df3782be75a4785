"""Checkpoints: safetensors weights with their metadata, never pickle.

A checkpoint is ``NAME.safetensors`` holding the tensors and, in the safetensors header, a JSON
document (kind, task, dims, config, normaliser statistics, versions, step). The same JSON is
written beside it as ``NAME.json`` for people and tools. Loading parses only the safetensors
header and raw tensor bytes: nothing in the file is ever executed.

The header also holds an integrity record (``smiling_ros.integrity``): every tensor's name, dtype
and shape and a SHA-256 of all tensor bytes. Loading refuses a file whose tensors differ from it
(a tensor added, removed, reshaped or its bytes changed), so a corrupted or edited file is an
error instead of a policy that silently behaves differently. Files written before the record
existed load without the check. The sidecar ``.json`` is for reading only: loading never uses it.

Writes are atomic: a temporary file in the same directory, fsync, then ``os.replace``. A crash
mid-write leaves the previous checkpoint intact (the sidecar may then describe the previous or
the new file; the embedded metadata is the one that counts).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import torch

from smiling_ros.errors import UserError
from smiling_ros.io.inputs import MAX_DEPTH, check_file, describe_mode, parse_json
from smiling_ros.io.outputs import atomic_path, os_errors, public_mode, sibling  # noqa: F401 - public_mode re-exported
from smiling_ros.io.outputs import atomic_write_text as _atomic_write_text

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)

FORMAT = "smiling_ros.checkpoint/1"  # a file-format name, independent of the module path
_META_KEY = "smiling_ros"
_INTEGRITY_KEY = "smiling_ros.integrity"


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
        return strip(self.tensors, prefix)

    def require(self, kind: str | tuple[str, ...], obs_dim: Optional[int] = None, act_dim: Optional[int] = None,
                task: Optional[str] = None) -> "Checkpoint":
        """Refuse a checkpoint of another kind, dimension or task, naming the file."""
        kinds = (kind,) if isinstance(kind, str) else kind
        name = self.path or "checkpoint"
        if self.kind not in kinds:
            raise UserError(f"{name}: is a '{self.kind}' checkpoint, expected {' or '.join(kinds)}")
        for key, want in (("obs_dim", obs_dim), ("act_dim", act_dim)):
            have = self.meta.get(key)
            if have is not None and (isinstance(have, bool) or not isinstance(have, int)):
                raise UserError(f"{name}: corrupt checkpoint metadata ({key} is {have!r}, not an integer)")
            if want is not None and have is not None and have != int(want):
                raise UserError(f"{name}: {key} is {have} but this robot/task has {want} (checkpoint of another task?)")
        if task and self.meta.get("task") and self.meta["task"] != task:
            raise UserError(f"{name}: trained for task '{self.meta['task']}', not '{task}'")
        return self


def module_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in module.state_dict().items()}


def strip(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def optimizer_state(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A torch optimiser's state as tensors ``prefix.<param>.<key>`` plus JSON metadata."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v.detach().clone()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str,
                         meta: dict[str, Any]) -> None:
    """Restore what :func:`optimizer_state` wrote."""
    state: dict[int, dict[str, Any]] = {}
    for k, v in strip(tensors, prefix).items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    for k, v in meta.get("scalars", {}).items():
        pid, key = k.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    opt.load_state_dict({"state": state, "param_groups": groups})


SPEC_FIELD_KEYS = ("topic", "type", "field", "joints", "indices", "size", "orientation")


def robot_spec(config: dict[str, Any], dataset_meta: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """What a policy was trained on, for the controller to compare with the robot it runs on.

    From the training config (a :meth:`Config.to_dict`) and, where known, the dataset's meta:
    ``observation`` (the fields: topic, type, field, joint names in order, ...), ``action``
    (``joints``: the command joints in order, ``meaning``, ``interface``; the dataset's
    ``action_spec``, recorded by import-bag from the robot config, where it has joints, else the
    training config's ``command`` section), ``rate_hz`` (the
    training rate: the dataset's, else the config's) and ``topic_rates_hz`` (each observation
    topic's message rate in the recording: the dataset's ``topic_rates_hz``, else messages over
    the recording's span).
    """
    obs = [{k: f.get(k) for k in SPEC_FIELD_KEYS if f.get(k) not in (None, "")}
           for f in config.get("observation") or [] if isinstance(f, dict)]
    command = config.get("command") or {}
    spec: dict[str, Any] = {
        "observation": obs,
        "action": {"joints": list(command.get("joints") or []), "meaning": command.get("meaning") or "",
                   "interface": command.get("interface") or ""},
        "rate_hz": config.get("rate_hz"),
        "topic_rates_hz": {},
    }
    dm = dataset_meta or {}
    if isinstance(dm.get("rate_hz"), (int, float)):
        spec["rate_hz"] = float(dm["rate_hz"])
    recorded: dict[str, Any] = dm["action_spec"] if isinstance(dm.get("action_spec"), dict) else {}
    if recorded.get("joints") and isinstance(recorded["joints"], list):  # what the demonstrations commanded
        spec["action"] = {"joints": [str(j) for j in recorded["joints"]],
                          "meaning": str(recorded.get("meaning") or spec["action"]["meaning"]),
                          "interface": str(recorded.get("interface") or spec["action"]["interface"])}
    source: dict[str, Any] = dm["source"] if isinstance(dm.get("source"), dict) else {}
    topics, t0, t1 = source.get("topics") or {}, source.get("start_ns"), source.get("end_ns")
    measured = dm.get("topic_rates_hz") if isinstance(dm.get("topic_rates_hz"), dict) else {}
    if measured:  # import-bag's rates
        spec["topic_rates_hz"] = {f["topic"]: float(measured[f["topic"]]) for f in obs
                                  if isinstance(measured.get(f["topic"]), (int, float)) and measured[f["topic"]] > 0}
    elif isinstance(t0, int) and isinstance(t1, int) and t1 > t0 and isinstance(topics, dict):
        for f in obs:
            info = topics.get(f["topic"])
            if isinstance(info, dict) and isinstance(info.get("count"), int) and info["count"] > 1:
                spec["topic_rates_hz"][f["topic"]] = (info["count"] - 1) * 1e9 / (t1 - t0)
    return spec


def _dataset_meta(dataset: Any) -> Optional[dict[str, Any]]:
    """The meta.json of the dataset a checkpoint names (``{"path": ...}`` or a path), if readable."""
    path = dataset.get("path") if isinstance(dataset, dict) else dataset
    if not isinstance(path, str) or not path:
        return None
    try:
        data = json.loads((Path(path) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    """Write the checkpoint :func:`checkpoint_path` (``path``) and its JSON sidecar
    (``sibling(path, ".json")``: ``a.safetensors`` -> ``a.json``, ``a.v2`` -> ``a.v2.json``), each
    atomically with normal file permissions. OS errors are one-line :class:`UserError` s naming the file.

    A checkpoint whose meta holds the training ``config`` also gets ``spec``
    (:func:`robot_spec`), with the topic rates of the dataset it names."""
    from safetensors.torch import save_file

    path = checkpoint_path(path)
    with os_errors("create directory", path.parent):
        path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT, "versions": versions(), **meta}
    if "spec" not in meta and isinstance(meta.get("config"), dict):
        meta["spec"] = robot_spec(meta["config"], _dataset_meta(meta.get("dataset")))
    doc = json.dumps(meta, default=_json_default)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    integrity = json.dumps(_integrity(flat))
    with atomic_path(path) as tmp:
        try:
            save_file(flat, str(tmp), metadata={_META_KEY: doc, _INTEGRITY_KEY: integrity})
        except (OSError, UserError):
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors reports I/O errors (a full disk) as its own type
            raise UserError(f"{path}: cannot write ({_first_line(exc)})") from None
    atomic_write_text(sidecar(path), json.dumps(meta, indent=1, default=_json_default))
    return path


def checkpoint_path(path: str | Path) -> Path:
    """The file a checkpoint named ``path`` is written to: ``path`` itself when its name has a
    suffix (``a.safetensors``, ``model.v2``: never changed), else ``path`` + ``.safetensors``."""
    p = Path(path)
    return p if p.suffix else p.with_name(p.name + ".safetensors")


def sidecar(path: str | Path) -> Path:
    """The ``.json`` written beside a checkpoint (for people and tools; loading never reads it)."""
    return sibling(path, ".json")


MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", require_integrity: bool = False) -> Checkpoint:
    """Read a checkpoint without executing anything from it; clear one-line errors otherwise.

    ``path`` is the checkpoint file, the same path without ``.safetensors`` or with the sidecar's
    ``.json`` suffix, or a run directory (its ``policy.safetensors``, else its only checkpoint).
    Refused, each with one line naming the file: anything but a regular file (a FIFO or device is
    never opened), pickle / ``torch.save`` files (never unpickled), anything that is not a complete
    safetensors file, a header or metadata that is oversized or nested too deeply, missing or
    corrupt smiling_ros metadata, tensors that differ from the integrity record, NaN/inf weights;
    with ``require_integrity`` (checkpoints that drive a robot or an evaluation) also a file
    without the integrity record.
    """
    from safetensors import SafetensorError, safe_open

    path = _resolve(Path(path))
    st = check_file(path, "checkpoint")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UserError(f"{path}: is {describe_mode(os.fstat(fd).st_mode)}, not a checkpoint file")
            head = os.read(fd, 16)
        finally:
            os.close(fd)
    except OSError as exc:
        raise UserError(f"{path}: cannot read checkpoint ({exc.strerror})") from None
    # A safetensors file starts with an 8-byte header length, then its JSON header ('{'); the length's
    # first byte may be 0x80 like a pickle's, so only files without that header are suspected.
    looks_safetensors = len(head) >= 9 and head[8:9] == b"{"
    if not looks_safetensors:
        if head[:1] == b"\x80" or head[:2] == b"PK":
            raise UserError(f"{path}: looks like a pickle/torch.save file; refusing to load it "
                            "(only safetensors checkpoints are accepted; nothing in it was run)")
        if not head:
            raise UserError(f"{path}: empty file, not a checkpoint")
        raise UserError(f"{path}: not a safetensors checkpoint (no safetensors header)")
    header_len = int.from_bytes(head[:8], "little")
    if header_len > min(MAX_HEADER_BYTES, st.st_size - 8):
        raise UserError(f"{path}: not a readable safetensors checkpoint (header of {header_len} bytes in a file of "
                        f"{st.st_size})")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise UserError(f"{path}: not a readable safetensors checkpoint ({_first_line(exc)})") from None
    if _META_KEY not in header:
        raise UserError(f"{path}: safetensors file without smiling_ros metadata (not a smiling_ros checkpoint)")
    try:
        meta = parse_json(header[_META_KEY], f"{path}: checkpoint metadata", MAX_DEPTH)
    except UserError as exc:
        raise UserError(str(exc).replace(": checkpoint metadata: ", ": corrupt checkpoint metadata: ", 1)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise UserError(f"{path}: unsupported checkpoint format {found!r} (expected {FORMAT})")
    if not isinstance(meta.get("kind", ""), str):
        raise UserError(f"{path}: corrupt checkpoint metadata ('kind' is not a string)")
    if _INTEGRITY_KEY in header:
        _verify(path, tensors, header[_INTEGRITY_KEY])
    elif require_integrity:
        raise UserError(f"{path}: checkpoint without an integrity record (written by an old version or edited); "
                        "refusing to deploy or evaluate it unverified (retrain, or re-save it with this version)")
    for k, v in tensors.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise UserError(f"{path}: tensor '{k}' contains NaN or inf")
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return Checkpoint(tensors, meta, path)


def load_module(ckpt: Checkpoint, prefix: str, factory: Callable[[], ModuleT], what: str = "") -> ModuleT:
    """Build ``factory()`` (a module whose architecture comes from checkpoint metadata) and load the
    tensors under ``prefix`` into it, checking first, without allocating anything, that the
    architecture matches the tensors: the module is built on the ``meta`` device and its parameter
    names and shapes are compared with the checkpoint's. A metadata that declares a huge layer
    is refused before any memory is used."""
    name = f"inconsistent {ckpt.kind or what or 'checkpoint'} checkpoint ({what or prefix})"
    with torch.device("meta"):
        probe = factory()
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in ckpt.sub(prefix).items()}
    del probe
    for k in sorted(set(want) | set(have)):
        if k not in have:
            raise UserError(f"{ckpt.path}: {name}: tensor '{prefix}.{k}' is missing (metadata and weights disagree)")
        if k not in want:
            raise UserError(f"{ckpt.path}: {name}: unexpected tensor '{prefix}.{k}' (metadata and weights disagree)")
        if want[k] != have[k]:
            raise UserError(f"{ckpt.path}: {name}: tensor '{prefix}.{k}' has shape {list(have[k])} but the "
                            f"metadata's architecture needs {list(want[k])}")
    module = factory()
    module.load_state_dict(ckpt.sub(prefix))
    return module


def _resolve(path: Path) -> Path:
    """The checkpoint file a user means by ``path`` (see :func:`load_checkpoint`)."""
    if str(path) == "":
        raise UserError("checkpoint: empty path")
    if path.is_dir():
        best = path / "policy.safetensors"
        if os.path.lexists(best):
            return best
        cands = sorted(p for p in path.glob("*.safetensors") if os.path.lexists(p))
        if len(cands) == 1:
            return cands[0]
        if not cands:
            raise UserError(f"{path}: directory holds no .safetensors checkpoint")
        raise UserError(f"{path}: directory holds several checkpoints ({', '.join(p.name for p in cands[:5])}); "
                        "name one")
    if not os.path.lexists(path):
        for alt in (path.with_name(path.name + ".safetensors"),
                    path.with_suffix(".safetensors") if path.suffix == ".json" else None):
            if alt is not None and os.path.lexists(alt):
                return alt
        raise UserError(f"{path}: checkpoint not found")
    if path.suffix == ".json" and os.path.lexists(path.with_suffix(".safetensors")):
        return path.with_suffix(".safetensors")  # the sidecar names its checkpoint; its content is not used
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The raw bytes of a CPU tensor in row-major order (any dtype)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy().tobytes()) if flat.numel() else memoryview(b"")


def _integrity(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Names, dtypes, shapes and a SHA-256 over (name, dtype, shape, bytes) of every tensor."""
    h = hashlib.sha256()
    manifest = {}
    for name in sorted(tensors):
        t = tensors[name]
        dtype, shape = str(t.dtype).replace("torch.", ""), list(t.shape)
        manifest[name] = [dtype, shape]
        h.update(json.dumps([name, dtype, shape]).encode())
        h.update(_tensor_bytes(t))
    return {"tensors": manifest, "sha256": h.hexdigest()}


def _verify(path: Path, tensors: dict[str, torch.Tensor], record: str) -> None:
    try:
        want = parse_json(record, f"{path}: checkpoint integrity record", MAX_DEPTH)
        manifest, digest = dict(want["tensors"]), str(want["sha256"])
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path}: corrupt checkpoint integrity record") from None
    extra = sorted(set(tensors) - set(manifest))
    missing = sorted(set(manifest) - set(tensors))
    if extra:
        raise UserError(f"{path}: unexpected tensor '{extra[0]}' (not written with this checkpoint; file modified?)")
    if missing:
        raise UserError(f"{path}: tensor '{missing[0]}' is missing (file modified?)")
    have = _integrity(tensors)
    for name, spec in have["tensors"].items():
        if list(manifest[name]) != spec:
            raise UserError(f"{path}: tensor '{name}' is {spec[0]}{spec[1]} but was written as "
                            f"{manifest[name][0]}{manifest[name][1]} (file modified?)")
    if have["sha256"] != digest:
        raise UserError(f"{path}: tensor data does not match its checksum (corrupted or modified file)")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file (logs, summaries, JSON results) atomically, creating its directory."""
    p = Path(path)
    with os_errors("create directory", p.parent):
        p.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(p, text)
