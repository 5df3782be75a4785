"""A Gymnasium env whose physics is a DyDiff world model learned from recordings.

Observation and action spaces, start states, action limits and the state support all come from the
``dydiff`` checkpoint. Each step advances the state with the mean of the single-step ensemble; with
``dydiff.env_refine`` every H-1 steps the window model re-samples the chunk just played given its first
state and the actions actually taken, and the current state becomes the average (weight ``mix``) of the
ensemble's and the window model's — the DyDiff correction of compounding single-step error, applied at
chunk boundaries because future actions are not known inside an env step.

reward: the world model's reward model (learned r(s, a), or the demonstrations' diffusion cost).
terminated: the learned termination model says the episode ends here (e.g. a fall, learned from
recorded episodes that ended early), the state left the data's support (min/max widened by
``support_margin`` stds), or the single-step ensemble disagrees on (s, a) more than anywhere in the data
(``dydiff.halt_disagreement``; ``info['halt']``): in those places the model has no data to be right about,
and a policy trained in it could learn to exploit its errors.
truncated: after ``horizon`` steps.
All randomness (start states, diffusion noise) derives from the env's ``np_random`` (seeded by reset).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch

from smiling_ros.config import Config
from smiling_ros.errors import UserError
from smiling_ros.methods.dydiff.train import WorldModel


class WorldModelEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, model: WorldModel, horizon: int, refine: bool = True):
        super().__init__()
        self.model = model
        self.horizon = int(horizon)
        self.refine = bool(refine)
        ds, da = model.obs_dim, model.act_dim
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (ds,), np.float32)
        self.action_space = gym.spaces.Box(model.low, model.high, (da,), np.float32)
        self._s = np.zeros(ds, np.float32)
        self._t = 0
        self._anchor: Optional[np.ndarray] = None
        self._chunk: list[np.ndarray] = []

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed)
        starts = self.model.start_states
        self._s = starts[int(self.np_random.integers(len(starts)))].copy()
        self._t = 0
        self._anchor, self._chunk = self._s.copy(), []
        return self._s.copy(), {}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float32).reshape(self.action_space.shape), self.model.low, self.model.high)
        s = torch.as_tensor(self._s)[None]
        at = torch.as_tensor(a)[None]
        nxt = self.model.ensemble.step(s, at, "mean")
        reward = float(self.model.reward(s, at)[0])
        halt = bool(self.model.unknown(s, at)[0])
        self._chunk.append(a)
        if self.refine and len(self._chunk) == self.model.H - 1:
            gen = torch.Generator().manual_seed(int(self.np_random.integers(2**31 - 1)))
            acts = torch.as_tensor(np.stack(self._chunk))[None]
            win = self.model.sample_window(torch.as_tensor(self._anchor)[None], acts, gen)
            nxt = (1 - self.model.cfg.mix) * nxt + self.model.cfg.mix * win[:, -1]
            self._chunk = []
        self._s = nxt[0].numpy().astype(np.float32)
        if not self._chunk:
            self._anchor = self._s.copy()
        self._t += 1
        terminated = halt or bool(self.model.is_terminal(torch.as_tensor(self._s)))
        truncated = self._t >= self.horizon
        return self._s.copy(), reward, terminated, truncated, {"world_model": True, "halt": halt}


def expected_obs_dim(cfg: Config) -> Optional[int]:
    """Observation size the config implies, when every field gives its ``size``."""
    sizes = [f.size for f in cfg.observation]
    known = [s for s in sizes if s is not None]
    if sizes and len(known) == len(sizes):
        return int(sum(known))
    return None


def make_world_model_env(ckpt_path: str | Path, cfg: Optional[Config] = None, horizon: Optional[int] = None,
                         refine: Optional[bool] = None) -> gym.Env:
    """Build the Gymnasium env over the ``dydiff`` checkpoint ``ckpt_path`` for the task of ``cfg``.

    Refuses (UserError) a checkpoint of another kind, of another task than ``cfg.task.env``, or whose
    dims disagree with the config's observation sizes / action limits. Episode length: ``horizon``, else
    the checkpoint's ``dydiff.env_horizon``, else ``cfg.task.max_episode_steps``, else 1000."""
    act_dim = None
    obs_dim = None
    task = None
    if cfg is not None:
        task = cfg.task.env or None
        obs_dim = expected_obs_dim(cfg)
        if cfg.limits.action_low:
            act_dim = len(cfg.limits.action_low)
    model = WorldModel.load(ckpt_path, task=task, obs_dim=obs_dim, act_dim=act_dim)
    if horizon is None:
        horizon = model.cfg.env_horizon or (cfg.task.max_episode_steps if cfg is not None else None) or 1000
    if horizon < 1:
        raise UserError(f"{ckpt_path}: world-model env horizon must be >= 1, got {horizon}")
    env = WorldModelEnv(model, horizon, model.cfg.env_refine if refine is None else refine)
    return env
