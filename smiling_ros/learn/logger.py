"""The one run logger: step-indexed scalar rows to a CSV file, and to TensorBoard when installed.

Every training writes its logs through :class:`RunLogger`. Naming (:func:`log_path`): a run directory
holds ``train.csv`` / ``eval.csv``; a checkpoint file ``OUT.safetensors`` gets ``OUT.train.csv`` beside
it (and ``OUT.train.png``, its plot). Rows are appended and flushed as written, so a crash keeps every
row logged so far; a resumed run truncates the rows after the step it resumes from.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from smiling_ros.learn.checkpoint import atomic_write_text


def log_path(checkpoint: str | Path, name: str = "train") -> Path:
    """The ``name`` log beside a checkpoint file: ``OUT.safetensors`` -> ``OUT.name.csv`` (its plot:
    ``OUT.name.png``), named like every file beside an output (:func:`smiling_ros.io.outputs.sibling`).
    A run directory's logs are ``RUN/train.csv`` and ``RUN/eval.csv``."""
    from smiling_ros.io.outputs import sibling

    return sibling(checkpoint, f".{name}.csv")


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


class RunLogger:
    """Rows ``{"step": int, name: value, ...}`` to ``path`` (CSV).

    ``columns`` fixes the header (other keys are dropped); without it the first row's keys are the
    header. ``resume_step`` keeps the rows of an existing file up to that step (a resumed run);
    otherwise an existing file is replaced. TensorBoard scalars (``<stem>/<name>``) go to
    ``<path without .csv>.tb/`` when ``tensorboard`` is installed."""

    def __init__(self, path: str | Path, columns: Optional[Sequence[str]] = None, *, resume_step: Optional[int] = None,
                 tensorboard: bool = True):
        self.path = Path(path)
        self.columns: Optional[list[str]] = list(columns) if columns is not None else None
        if self.columns is not None and "step" not in self.columns:
            self.columns.insert(0, "step")
        self.rows: list[dict[str, Any]] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [r for r in self.read() if r.get("step") not in (None, "") and float(r["step"]) <= resume_step]
            if self.columns is None and kept:
                self.columns = list(kept[0])
            self._rewrite(kept)
            self.rows = [{k: _number(v) for k, v in r.items()} for r in kept]
        elif self.path.exists():
            self.path.unlink()
        self._tb = _summary_writer(self.path) if tensorboard else None

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, self.columns or [], extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())

    def log(self, step: int, **values: Any) -> dict[str, Any]:
        """Append one row; returns it (numbers as Python floats/ints)."""
        row: dict[str, Any] = {"step": int(step)}
        for k, v in values.items():
            row[k] = v.item() if isinstance(v, np.generic) else v
        if self.columns is None:
            self.columns = list(row)
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, self.columns, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _cell(row.get(k)) for k in self.columns})
        self.rows.append(row)
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    self._tb.add_scalar(f"{self.path.stem}/{k}", v, int(step))
        return row

    def read(self) -> list[dict[str, str]]:
        """The rows on disk (strings, as csv reads them)."""
        return read_rows(self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def last_row(log: RunLogger) -> Optional[dict[str, str]]:
    """The last row on disk of ``log`` (None when it has none)."""
    rows = log.read()
    return rows[-1] if rows else None


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The rows of a log file (strings, as csv reads them); [] when there is none."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(v: str) -> Any:
    if v == "":
        return None
    try:
        return float(v)
    except ValueError:
        return v


def _summary_writer(path: Path) -> Any:
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(path.with_suffix(".tb")))
