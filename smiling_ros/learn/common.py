"""Helpers shared by the offline methods: action bounds, seeding, batching, CSV/PNG training logs."""
from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch

from smiling_ros.config import Config
from smiling_ros.data.dataset import Dataset
from smiling_ros.errors import UserError


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def action_bounds(cfg: Optional[Config], dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Action limits in robot units, (act_dim,) each.

    In order of preference: the config's ``limits``, the dataset's recorded ``action_low``/
    ``action_high`` meta, the config's Gymnasium env action space, and finally the range seen in the
    data widened by 5% (a robot without a simulator or configured limits)."""
    act = dataset.require_actions("action bounds")
    dim = act.shape[1]
    where = (cfg.path if cfg is not None else "") or "config"
    if cfg is not None and cfg.limits.action_low:
        low, high = np.asarray(cfg.limits.action_low, np.float32), np.asarray(cfg.limits.action_high, np.float32)
        if low.shape[0] != dim:
            raise UserError(f"{where}: limits.action_low has {low.shape[0]} entries but the dataset's actions have {dim}")
        return low, high
    m = dataset.meta
    if "action_low" in m and "action_high" in m and len(m["action_low"]) == dim:
        return np.asarray(m["action_low"], np.float32), np.asarray(m["action_high"], np.float32)
    if cfg is not None and cfg.task.env:
        space = env_action_space(cfg)
        if space is not None:
            if space.shape[0] != dim:
                raise UserError(f"{where}: task.env '{cfg.task.env}' has {space.shape[0]} action dims but the dataset "
                                f"{dataset.meta.get('path', '')} has {dim} (dataset of another task?)")
            return space.low.astype(np.float32), space.high.astype(np.float32)
    lo, hi = act.min(0), act.max(0)
    pad = 0.05 * np.maximum(hi - lo, 1e-3)
    return (lo - pad).astype(np.float32), (hi + pad).astype(np.float32)


def env_action_space(cfg: Config):
    """The Box action space of the config's Gymnasium env, or None if it cannot be built here."""
    try:
        import gymnasium as gym

        try:
            import smiling_ros.envs  # noqa: F401  (registers the project's own tasks)
        except ImportError:
            pass
        env = gym.make(cfg.task.env, **cfg.task.env_kwargs)
    except Exception:  # noqa: BLE001 - an env that cannot be built here just gives no bounds
        return None
    try:
        return env.action_space
    finally:
        env.close()


def check_dataset_dims(ds: Dataset, cfg: Optional[Config]) -> None:
    """Refuse a dataset recorded for another task than the config names (when both say)."""
    task = ds.meta.get("task")
    if cfg is not None and cfg.task.env and task and task != cfg.task.env:
        raise UserError(f"{ds.meta.get('path', 'dataset')}: recorded for task '{task}', but {cfg.path} is for '{cfg.task.env}'")


def batches(n: int, batch_size: int, gen: torch.Generator) -> Iterable[torch.Tensor]:
    """Endless random index batches over range(n) (with replacement across epochs)."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            yield perm[i:i + batch_size]


class TrainLog:
    """Rows of scalars to ``PREFIX.csv`` (flushed as written) and a loss plot ``PREFIX.png``."""

    def __init__(self, prefix: str | Path, fields: list[str]):
        self.prefix = Path(prefix)
        self.prefix.parent.mkdir(parents=True, exist_ok=True)
        self.fields = ["step"] + list(fields)
        self.rows: list[dict[str, Any]] = []
        self._f = open(self.prefix.with_name(self.prefix.name + ".csv"), "w", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.fields)
        self._w.writeheader()

    def add(self, step: int, **values: float) -> None:
        row = {"step": step, **{k: float(v) for k, v in values.items() if k in self.fields}}
        self.rows.append(row)
        self._w.writerow(row)
        self._f.flush()

    def close(self, title: str = "") -> Path:
        self._f.close()
        return plot_rows(self.rows, self.fields[1:], self.prefix.with_name(self.prefix.name + ".png"), title)


def plot_rows(rows: list[dict[str, Any]], fields: list[str], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = [f for f in fields if any(f in r for r in rows)]
    fig, axes = plt.subplots(len(fields) or 1, 1, figsize=(6, 2.2 * max(len(fields), 1)), sharex=True, squeeze=False)
    for ax, f in zip(axes[:, 0], fields):
        pts = [(r["step"], r[f]) for r in rows if f in r]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, lw=1)
        ax.set_ylabel(f, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    if title:
        axes[0, 0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def collect_dataset(env, act_fn, episodes: int, seed: int = 0, max_steps: Optional[int] = None,
                    task: str = "", on_reset=None) -> Dataset:
    """Roll ``act_fn(obs) -> action`` in a Gymnasium ``env`` for ``episodes`` episodes
    (``on_reset(obs)``, if given, is called at each episode start, e.g. a scripted expert's reset).

    Row k holds obs_k, the action taken from it and the reward received; the final observation of each
    episode is stored with the action the policy chooses there and reward 0 (the dataset convention:
    every row is a state with its command)."""
    eps, rews, succ = [], [], []
    reports_success = False
    for ep in range(episodes):
        o, _ = env.reset(seed=seed + ep)
        if on_reset is not None:
            on_reset(o)
        obs, acts, rs = [o], [], []
        done, k, success = False, 0, False
        while not done:
            a = np.asarray(act_fn(o), np.float32)
            o, r, term, trunc, info = env.step(a)
            acts.append(a)
            rs.append(r)
            obs.append(o)
            if "is_success" in info or "success" in info:
                reports_success = True
                success = success or bool(info.get("is_success", info.get("success", False)))
            k += 1
            done = term or trunc or (max_steps is not None and k >= max_steps)
        acts.append(np.asarray(act_fn(o), np.float32))  # what the policy would do in the final state
        rs.append(0.0)
        eps.append((np.asarray(obs, np.float32), np.asarray(acts, np.float32)))
        rews.append(np.asarray(rs, np.float32))
        succ.append(success)
    ds = Dataset.from_episodes(eps, {"task": task, "source": "collect_dataset"}, succ if reports_success else None)
    ds.reward = np.concatenate(rews)
    space = env.action_space
    ds.meta.update(action_low=space.low.tolist(), action_high=space.high.tolist())
    return ds
