"""The one plotting module (matplotlib, Agg): loss curves and learning curves, written atomically."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _value(v: Any) -> Optional[float]:
    if v is None or v == "":
        return None
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def plot_rows(rows: Sequence[dict[str, Any]], keys: Sequence[str], path: str | Path, title: str = "",
              logy: bool = False, xlabel: str = "step") -> Optional[Path]:
    """One panel per key in ``keys`` that any row has, against ``step``. None when nothing to plot."""
    keys = [k for k in keys if any(_value(r.get(k)) is not None for r in rows)]
    if not keys:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(keys), 1, figsize=(6, 2.2 * len(keys)), sharex=True, squeeze=False)
    for ax, k in zip(axes[:, 0], keys):
        pts = [(_value(r["step"]), _value(r.get(k))) for r in rows if _value(r.get(k)) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1)
        if logy and all((p[1] or 0) > 0 for p in pts):
            ax.set_yscale("log")
        ax.set_ylabel(k, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(xlabel)
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_learning_curve(out_dir: str | Path, title: str, train_key: str = "ep_return", xlabel: str = "env steps",
                        train_label: str = "training episode return (env reward)") -> Optional[Path]:
    """``out_dir/learning_curve.png``: the evaluation (normalised return where references exist, else
    return) from ``eval.csv`` beside ``train_key`` from ``train.csv``."""
    from smiling_ros.learn.logger import read_rows

    out = Path(out_dir)
    ev, tr = read_rows(out / "eval.csv"), read_rows(out / "train.csv")
    if not ev and not tr:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    norm = [r for r in ev if _value(r.get("normalized_return")) is not None]
    key = "normalized_return" if norm else "mean_return"
    pts = [(_value(r["step"]), _value(r.get(key))) for r in ev if _value(r.get(key)) is not None]
    if pts:
        ax[0].plot([p[0] for p in pts], [p[1] for p in pts], "o-")
    if norm:
        ax[0].axhline(1.0, color="gray", ls="--", lw=0.8)
        ax[0].axhline(0.0, color="gray", ls=":", lw=0.8)
    ax[0].set_ylabel(("normalised return" if norm else "return") + " (eval)")
    ax[0].set_xlabel(xlabel)
    pts = [(_value(r["step"]), _value(r.get(train_key))) for r in tr if _value(r.get(train_key)) is not None]
    if pts:
        ax[1].plot([p[0] for p in pts], [p[1] for p in pts])
        if train_key.endswith("loss") and all((p[1] or 0) > 0 for p in pts):
            ax[1].set_yscale("log")
    ax[1].set_xlabel(xlabel)
    ax[1].set_ylabel(train_label)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out / "learning_curve.png")

