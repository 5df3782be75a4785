"""Checkpoints between machines: a checkpoint's bytes with a header, verified before use.

A trainer on a GPU workstation and the controller on the robot's computer share no disk, so an
announcement may carry the checkpoint itself. The wire form (``encode``) is::

    b"SRCKPT01"  uint32 big-endian header length  JSON header  checkpoint bytes

with the header ``{"name": "policy_000005000.safetensors", "size": N, "sha256": "<hex>"}``.
:func:`decode` refuses, each with one line: a payload over the size limit (checked before hashing
anything), a wrong magic or header, a size or SHA-256 that does not match the bytes (a corrupted
or tampered transfer). :func:`store` then writes the verified bytes atomically into a cache
directory, named by their hash, and only that file is ever loaded (with the checkpoint's own
checks: safetensors only, its integrity record, never pickle).

A plain announcement (a JSON ``{"path", "sha256", "size"}`` on the policy topic) names a file
on a shared disk; :func:`verify_file` checks it against the announced hash before loading.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from smiling_ros.errors import UserError

MAGIC = b"SRCKPT01"
_HEAD = struct.Struct(">I")
MAX_HEADER = 4096
DEFAULT_CACHE = Path("~/.cache/smiling_ros/checkpoints")


@dataclass
class Header:
    name: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_checkpoint(path: str | Path, max_bytes: Optional[int] = None) -> tuple[Header, bytes]:
    """The bytes of a checkpoint file and their header (one read: what is hashed is what is sent)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise UserError(f"{p}: checkpoint of {size / 1e6:.1f} MB is over the {max_bytes / 1e6:.1f} MB limit")
        data = p.read_bytes()
    except OSError as exc:
        raise UserError(f"{p}: cannot read checkpoint ({exc.strerror})") from None
    return Header(p.name, len(data), hashlib.sha256(data).hexdigest()), data


def encode(header: Header, data: bytes) -> bytes:
    head = json.dumps(header.to_dict(), sort_keys=True).encode()
    return MAGIC + _HEAD.pack(len(head)) + head + data


def decode(buf: Any, max_bytes: int, where: str = "checkpoint transfer") -> tuple[Header, memoryview]:
    """Check a received transfer (bytes-like) and return its header and checkpoint bytes."""
    mv = memoryview(buf).cast("B")
    if len(mv) - len(MAGIC) - _HEAD.size > max_bytes + MAX_HEADER:
        raise UserError(f"{where}: {len(mv) / 1e6:.1f} MB is over the {max_bytes / 1e6:.1f} MB checkpoint limit; refused")
    if len(mv) < len(MAGIC) + _HEAD.size or bytes(mv[:len(MAGIC)]) != MAGIC:
        raise UserError(f"{where}: not a checkpoint transfer (bad magic); refused")
    (n,) = _HEAD.unpack(bytes(mv[len(MAGIC):len(MAGIC) + _HEAD.size]))
    start = len(MAGIC) + _HEAD.size
    if n > MAX_HEADER or start + n > len(mv):
        raise UserError(f"{where}: corrupt transfer header; refused")
    try:
        h = json.loads(bytes(mv[start:start + n]))
        header = Header(str(h["name"]), int(h["size"]), str(h["sha256"]).lower())
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{where}: corrupt transfer header; refused") from None
    data = mv[start + n:]
    if header.size > max_bytes or len(data) > max_bytes:
        raise UserError(f"{where}: checkpoint '{header.name}' of {max(header.size, len(data)) / 1e6:.1f} MB is over "
                        f"the {max_bytes / 1e6:.1f} MB limit; refused")
    if len(data) != header.size:
        raise UserError(f"{where}: '{header.name}' has {len(data)} bytes, the header says {header.size} "
                        "(truncated or tampered); refused")
    if not re.fullmatch(r"[0-9a-f]{64}", header.sha256):
        raise UserError(f"{where}: header has no valid sha256; refused")
    if hashlib.sha256(data).hexdigest() != header.sha256:
        raise UserError(f"{where}: '{header.name}' does not match its sha256 (corrupted or tampered); refused")
    return header, data


def cache_dir(configured: str = "") -> Path:
    return Path(configured).expanduser() if configured else DEFAULT_CACHE.expanduser()


def store(header: Header, data: Any, directory: str | Path) -> Path:
    """Write verified bytes to ``directory/<sha256[:16]>-<name>`` atomically (kept if present)."""
    d = Path(directory)
    base = re.sub(r"[^A-Za-z0-9._-]", "_", Path(header.name).name) or "policy"
    if not base.endswith(".safetensors"):
        base += ".safetensors"
    target = d / f"{header.sha256[:16]}-{base}"
    try:
        d.mkdir(parents=True, exist_ok=True)
        if target.is_file() and sha256_file(target) == header.sha256:
            return target
        tmp = d / f".{target.name}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        raise UserError(f"{d}: cannot store the transferred checkpoint ({exc.strerror})") from None
    return target


def announcement(path: str | Path, header: Header, transfer: bool = False) -> str:
    """The JSON announcement of a checkpoint file (path for a shared disk, plus its hash);
    ``transfer``: its bytes are sent too, and a controller loads those (never the path)."""
    return json.dumps({"path": str(Path(path).resolve()), **header.to_dict(), "transfer": bool(transfer)},
                      sort_keys=True)


def parse_announcement(text: str) -> dict[str, Any]:
    """``{"path": ..., "sha256": ... or None}`` from a policy-topic message: a JSON announcement,
    or a bare path (one machine, no hash)."""
    t = text.strip()
    if t.startswith("{"):
        try:
            d = json.loads(t)
        except ValueError:
            raise UserError("policy announcement: invalid JSON") from None
        if not isinstance(d, dict) or not isinstance(d.get("path", ""), str):
            raise UserError("policy announcement: expected a JSON object with 'path'")
        sha = d.get("sha256")
        return {"path": d.get("path", ""), "sha256": str(sha).lower() if sha else None, "name": d.get("name"),
                "transfer": d.get("transfer") is True}
    return {"path": t, "sha256": None, "name": None, "transfer": False}


def verify_file(path: str | Path, sha256: Optional[str], max_bytes: int) -> None:
    """Refuse a file over the limit or whose hash is not the announced one."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as exc:
        raise UserError(f"{p}: cannot read checkpoint ({exc.strerror})") from None
    if size > max_bytes:
        raise UserError(f"{p}: checkpoint of {size / 1e6:.1f} MB is over the {max_bytes / 1e6:.1f} MB limit; refused")
    if sha256 and sha256_file(p) != sha256:
        raise UserError(f"{p}: does not match the announced sha256 (changed since the announcement?); refused")
