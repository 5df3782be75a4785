"""TD3+BC (Fujimoto & Gu, "A Minimalist Approach to Offline Reinforcement Learning", 2021).

TD3 with the actor loss  -lambda * Q(s, pi(s)) + ||pi(s) - a||^2,  lambda = alpha / mean|Q(s, pi(s))|,
states z-scored with the dataset's statistics, actions in [-1, 1] (the tanh range of the actor; robot
units are reached through the action bounds). Written here rather than taken from a library because
the DyDiff learner needs batches mixed from two buffers at a fixed ratio (60% real, 40% synthetic),
and the actor must be a :class:`~smiling_ros.learn.policy.MlpActor` so the result deploys as an
``mlp_policy``.
"""
from __future__ import annotations

import copy
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smiling_ros.data.dataset import Normalizer
from smiling_ros.learn.nets import mlp
from smiling_ros.learn.policy import MlpActor, MlpPolicy


class ReplayBuffer:
    """Transitions (obs, act, reward, next_obs, done) in robot units; FIFO when full."""

    KEYS = ("obs", "act", "reward", "next_obs", "done")

    def __init__(self, obs_dim: int, act_dim: int, capacity: int):
        self.capacity, self.size, self.ptr = int(capacity), 0, 0
        self.data = {
            "obs": np.zeros((capacity, obs_dim), np.float32), "act": np.zeros((capacity, act_dim), np.float32),
            "reward": np.zeros(capacity, np.float32), "next_obs": np.zeros((capacity, obs_dim), np.float32),
            "done": np.zeros(capacity, np.float32),
        }

    def __len__(self) -> int:
        return self.size

    @classmethod
    def from_arrays(cls, obs, act, reward, next_obs, done) -> "ReplayBuffer":
        b = cls(obs.shape[1], act.shape[1], len(obs))
        b.add(obs, act, reward, next_obs, done)
        return b

    def add(self, obs, act, reward, next_obs, done) -> None:
        n = len(obs)
        if n == 0:
            return
        if n >= self.capacity:
            obs, act, reward, next_obs, done = (x[-self.capacity:] for x in (obs, act, reward, next_obs, done))
            n = self.capacity
        idx = (self.ptr + np.arange(n)) % self.capacity
        for k, v in zip(self.KEYS, (obs, act, reward, next_obs, done)):
            self.data[k][idx] = v
        self.ptr = int((self.ptr + n) % self.capacity)
        self.size = min(self.capacity, self.size + n)

    def sample(self, n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (n,), generator=gen).numpy()
        return {k: torch.as_tensor(self.data[k][idx]) for k in self.KEYS}

    @staticmethod
    def cat(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: torch.cat([a[k], b[k]]) for k in a}


class TwinCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int]):
        super().__init__()
        self.q1 = mlp([obs_dim + act_dim] + list(hidden) + [1])
        self.q2 = mlp([obs_dim + act_dim] + list(hidden) + [1])

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat([s, a], -1)
        return self.q1(x).squeeze(-1), self.q2(x).squeeze(-1)


class TD3BC:
    """Learner state: actor, critics, their targets and optimisers. ``cfg`` is a TD3BCConfig."""

    def __init__(self, obs_dim: int, act_dim: int, obs_norm: Normalizer, low: np.ndarray, high: np.ndarray, cfg,
                 gen: torch.Generator, meta: Optional[dict[str, Any]] = None):
        self.cfg, self.gen = cfg, gen
        self.obs_norm = obs_norm
        self.actor = MlpActor(obs_dim, act_dim, cfg.hidden, "relu")
        self.actor_t = copy.deepcopy(self.actor)
        self.critic = TwinCritic(obs_dim, act_dim, cfg.hidden)
        self.critic_t = copy.deepcopy(self.critic)
        for p in list(self.actor_t.parameters()) + list(self.critic_t.parameters()):
            p.requires_grad_(False)
        self.opt_a = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.opt_c = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)
        self._policy = MlpPolicy(self.actor, obs_norm, low, high, meta=meta)
        self.actor.train()
        self.it = 0

    def policy(self) -> MlpPolicy:
        """The deployable deterministic policy (shares the actor's weights)."""
        return self._policy

    @torch.no_grad()
    def act_torch(self, s: torch.Tensor) -> torch.Tensor:
        """(B, ds) robot units -> (B, da) robot units (deterministic)."""
        return self._policy.forward(s)

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, float]:
        cfg = self.cfg
        s, s2 = self.obs_norm.normalize(b["obs"]), self.obs_norm.normalize(b["next_obs"])
        a = self._policy.unscale(b["act"])
        r, d = b["reward"], b["done"]
        with torch.no_grad():
            noise = (torch.randn(a.shape, generator=self.gen) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a2 = (self.actor_t(s2) + noise).clamp(-1, 1)
            q1t, q2t = self.critic_t(s2, a2)
            target = r + cfg.gamma * (1 - d) * torch.minimum(q1t, q2t)
        q1, q2 = self.critic(s, a)
        critic_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.opt_c.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.opt_c.step()
        info = {"critic_loss": critic_loss.item(), "q": q1.mean().item()}
        self.it += 1
        if self.it % cfg.policy_freq == 0:
            pi = self.actor(s)
            q = self.critic(s, pi)[0]
            lam = cfg.alpha / q.abs().mean().detach().clamp(min=1e-6)
            bc = F.mse_loss(pi, a)
            actor_loss = -lam * q.mean() + bc
            self.opt_a.zero_grad(set_to_none=True)
            actor_loss.backward()
            self.opt_a.step()
            with torch.no_grad():
                for net, tgt in ((self.actor, self.actor_t), (self.critic, self.critic_t)):
                    for p, pt in zip(net.parameters(), tgt.parameters()):
                        pt.mul_(1 - cfg.tau).add_(cfg.tau * p)
            info.update(actor_loss=actor_loss.item(), bc=bc.item())
        return info
