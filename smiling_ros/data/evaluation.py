"""Policy evaluation: returns, success rate and normalised return.

``evaluate(policy, env_fn, episodes, seed, references=None)`` runs ``episodes`` episodes
(episode i reset with seed ``seed + i``; deterministic policy actions) and returns::

    {"returns": [...], "mean_return": float, "std_return": float, "success_rate": float | None,
     "normalized_return": float | None, "episode_lengths": [...]}

Normalised return is ``(R - R_random) / (R_expert - R_random)`` with references from
:func:`reference_returns` (a uniform-random policy's and the expert's mean returns; the expert's
may come from the dataset's meta). Success is the env's ``info['is_success']`` (or ``'success'``)
at the last step; None when the env does not report it.

``policy`` may be any :class:`~smiling_ros.learn.policy.Policy`, a checkpoint path (any kind that
:func:`~smiling_ros.learn.policy.load_policy` knows), ``"scripted"`` (the task's scripted expert) or
``"random"``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from smiling_ros.errors import UserError

EnvFn = Callable[[], Any]


EVAL_COLUMNS = ["step", "time_s", "mean_return", "std_return", "success_rate", "normalized_return"]
"""Columns of every run's ``eval.csv``."""


class RandomPolicy:
    """Uniform random actions from an action space (seeded)."""

    def __init__(self, action_space, seed: int = 0):
        self.space = action_space
        self.space.seed(int(seed))
        self.obs_dim = 0
        self.act_dim = int(np.prod(action_space.shape))

    def reset(self, obs=None) -> None:
        pass

    def act(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(self.space.sample(), np.float32)


def resolve_policy(spec: Any, env, device: str = "cpu", seed: int = 0):
    """A Policy from a Policy object, checkpoint path, 'scripted' or 'random'; checks dimensions."""
    if not isinstance(spec, (str, Path)):
        return spec
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    if str(spec) == "random":
        return RandomPolicy(env.action_space, seed)
    if str(spec) == "scripted":
        from smiling_ros.envs import scripted_expert

        pol = scripted_expert(env, seed=seed)
        if pol is None:
            task = getattr(getattr(env, "spec", None), "id", "this task")
            raise UserError(f"'scripted': task '{task}' has no scripted expert (pass an expert checkpoint)")
        return pol
    from smiling_ros.learn.policy import load_policy

    return load_policy(spec, device=device, obs_dim=obs_dim, act_dim=act_dim)


def run_episodes(policy, env, episodes: int, seed: int = 0, record: bool = False,
                 max_steps: Optional[int] = None) -> list[dict[str, Any]]:
    """Roll ``policy`` out for ``episodes`` episodes on ``env`` (reset with seed+i).

    Each result: return, length, success (bool or None); with ``record`` also obs (L, obs_dim)
    and act (L, act_dim): the observation at each step and the action applied from it."""
    out = []
    for i in range(int(episodes)):
        obs, info = env.reset(seed=int(seed) + i)
        try:
            policy.reset(obs)
        except TypeError:
            policy.reset()
        ret, length, success = 0.0, 0, _success(info)
        obs_l, act_l = [], []
        done = False
        while not done:
            a = np.asarray(policy.act(np.asarray(obs, np.float32)), np.float32).reshape(env.action_space.shape)
            if not np.all(np.isfinite(a)):
                raise UserError(f"policy produced a non-finite action at episode {i} step {length}")
            if record:
                obs_l.append(np.asarray(obs, np.float32))
                act_l.append(a)
            obs, r, term, trunc, info = env.step(a)
            ret += float(r)
            length += 1
            done = term or trunc or (max_steps is not None and length >= max_steps)
        success = _success(info)
        ep: dict[str, Any] = {"return": ret, "length": length, "success": success}
        if record:
            ep["obs"], ep["act"] = np.stack(obs_l), np.stack(act_l)
        out.append(ep)
    return out


def _success(info: dict) -> Optional[bool]:
    for key in ("is_success", "success"):
        if key in info:
            return bool(info[key])
    return None


def normalized_return(R: float, references: Optional[dict]) -> Optional[float]:
    if not references or references.get("expert") is None or references.get("random") is None:
        return None
    span = float(references["expert"]) - float(references["random"])
    if abs(span) < 1e-9:
        return None
    return (float(R) - float(references["random"])) / span


def evaluate(policy, env_fn: Optional[EnvFn], episodes: int = 10, seed: int = 0, references: Optional[dict] = None,
             device: str = "cpu", env=None) -> dict[str, Any]:
    """Evaluate ``policy`` (see module docstring) on a fresh env from ``env_fn`` (closed after),
    or on ``env`` when given (left open, e.g. one env reused by a trainer's periodic evaluation)."""
    own = env is None
    if own:
        if env_fn is None:
            raise ValueError("evaluate: give env_fn or env")
        env = env_fn()
    try:
        pol = resolve_policy(policy, env, device=device, seed=seed)
        eps = run_episodes(pol, env, episodes, seed)
    finally:
        if own:
            env.close()
    returns = [e["return"] for e in eps]
    succ = [e["success"] for e in eps]
    mean = float(np.mean(returns)) if returns else float("nan")
    return {
        "returns": returns,
        "mean_return": mean,
        "std_return": float(np.std(returns)) if returns else float("nan"),
        "success_rate": None if any(s is None for s in succ) or not succ else float(np.mean(succ)),
        "normalized_return": normalized_return(mean, references),
        "episode_lengths": [e["length"] for e in eps],
    }


def expert_spec(cfg) -> Optional[str]:
    """The expert named by the config's ``expert.checkpoint`` (resolved path or 'scripted'), or
    'scripted' when the task has a scripted expert and none is named; None otherwise."""
    from smiling_ros.methods.smiling.config import expert_section

    name = expert_section(cfg).checkpoint
    if name in ("scripted", "random"):
        return name
    if name:
        return str(resolve_path(name, cfg))
    if cfg.task.env == "smiling_ros/ArmReach-v0":
        return "scripted"
    return None


def resolve_path(name: str, cfg=None) -> Path:
    """A file path as given, else relative to the config's folder, else the package share dir."""
    p = Path(name)
    if p.is_absolute() or p.exists():
        return p
    cands = []
    if cfg is not None and cfg.path:
        cands.append(Path(cfg.path).parent / p)
        cands.append(Path(cfg.path).parent.parent / p)
    from smiling_ros.paths import share_dir

    cands.append(share_dir() / p)
    for c in cands:
        if c.exists():
            return c
    return p


def load_references(path: Path, task: str) -> Optional[dict[str, Any]]:
    """Cached references from ``path`` when they exist and are for ``task``; else None."""
    from smiling_ros.errors import UserError
    from smiling_ros.io.inputs import is_regular, load_json_file

    if not is_regular(path):  # absent, or a FIFO/device: never opened
        return None
    try:
        ref = load_json_file(path, "references", max_bytes=1 << 20)
    except UserError:
        return None
    return ref if isinstance(ref, dict) and ref.get("task") == task else None


def reference_returns(env_fn: EnvFn, expert: Any = None, episodes: int = 10, seed: int = 10_000,
                      dataset=None, cache: Optional[Path] = None, task: str = "") -> dict[str, Any]:
    """Reference returns for normalisation: {'random', 'expert', 'task', 'episodes', 'expert_source'}.

    Random: uniform-random actions. Expert: ``dataset.meta['expert_return']`` when the dataset
    carries it for this task, else rollouts of ``expert`` (a policy spec), else None. Cached as
    JSON in ``cache`` (reused when the task matches)."""
    if cache is not None:
        cached = load_references(cache, task)
        if cached is not None:
            return cached
    env = env_fn()
    try:
        rnd = run_episodes(RandomPolicy(env.action_space, seed), env, episodes, seed)
        ref: dict[str, Any] = {"task": task, "episodes": int(episodes),
                               "random": float(np.mean([e["return"] for e in rnd])), "expert": None,
                               "expert_source": None}
        meta = getattr(dataset, "meta", None) or {}
        if meta.get("expert_return") is not None and (not meta.get("task") or meta.get("task") == task):
            ref["expert"], ref["expert_source"] = float(meta["expert_return"]), f"dataset {meta.get('path', '')}".strip()
        elif expert is not None:
            pol = resolve_policy(expert, env, seed=seed)
            eps = run_episodes(pol, env, episodes, seed)
            ref["expert"], ref["expert_source"] = float(np.mean([e["return"] for e in eps])), str(expert)
    finally:
        env.close()
    if cache is not None:
        from smiling_ros.learn.checkpoint import atomic_write_text

        atomic_write_text(cache, json.dumps(ref, indent=1))
    return ref
