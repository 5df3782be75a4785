"""Helpers shared by the trainers: seeding, the dataset/task check, rollouts of a policy into a dataset."""
from __future__ import annotations

import random
from typing import Any, Optional

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


def offline_inputs(cfg: Any, dataset: Dataset, verb: str, seed: Optional[int] = None
                   ) -> tuple[np.ndarray, np.ndarray, int, str]:
    """What an offline trainer needs from its config and (s, a) dataset, checked: (action low, high,
    the seed (``seed``, else the config's), the task name). Refuses a dataset without actions or of
    another task, and bad action bounds (:func:`smiling_ros.learn.bounds.action_bounds`)."""
    from smiling_ros.learn.bounds import action_bounds

    dataset.require_actions(verb)
    check_dataset_dims(dataset, cfg)
    low, high, _ = action_bounds(cfg, dataset)
    return low, high, int(cfg.seed if seed is None else seed), str(dataset.meta.get("task") or cfg.task.env)


def check_dataset_dims(ds: Dataset, cfg: Optional[Config]) -> None:
    """Refuse a dataset recorded for another task than the config names (when both say)."""
    task = ds.meta.get("task")
    if cfg is not None and cfg.task.env and task and task != cfg.task.env:
        raise UserError(f"{ds.meta.get('path', 'dataset')}: recorded for task '{task}', but {cfg.path} is for '{cfg.task.env}'")


def collect_dataset(env, act_fn, episodes: int, seed: int = 0, max_steps: Optional[int] = None,
                    task: str = "", on_reset=None) -> Dataset:
    """Roll ``act_fn(obs) -> action`` in a Gymnasium ``env`` for ``episodes`` episodes
    (``on_reset(obs)``, if given, is called at each episode start, e.g. a scripted expert's reset).

    Row k holds obs_k, the action taken from it and the reward received; the final observation of each
    episode is stored with the action the policy chooses there and reward 0 (the dataset convention:
    every row is a state with its command)."""
    eps: list[tuple[np.ndarray, Optional[np.ndarray]]] = []
    rews: list[np.ndarray] = []
    succ: list[bool] = []
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
