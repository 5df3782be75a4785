"""A stable-baselines3 replay buffer whose rewards are computed when a batch is sampled.

SMILING's and DAC's rewards depend on networks that keep changing, so storing a reward with
the transition would make it stale. :class:`RelabelingReplayBuffer` stores the env reward as
SB3 does (kept for logging and for plain SAC) and, when ``relabel`` is set, replaces the
sampled batch's rewards by ``relabel(samples) -> (B,)`` computed with the current networks.

The buffer also serves the score/discriminator players the latest learner inputs
(:func:`recent_rows`), so no second copy of the learner's states is kept.

Layout (SB3): arrays of shape (positions, n_envs, dim); position ``p`` holds the transitions
that the ``n_envs`` vectorised env copies made at the same vectorised step, so one position is
``n_envs`` env steps and ``buffer_size`` counts positions (SB3 divides the requested size by
``n_envs``). Counts given to this module (the FIFO size) are in transitions (env steps).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples

Relabel = Callable[[ReplayBufferSamples], torch.Tensor]

ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class RelabelingReplayBuffer(ReplayBuffer):
    """``ReplayBuffer`` + reward relabelling at sample time (``relabel``; None = env reward)."""

    relabel: Optional[Relabel] = None

    def sample(self, batch_size: int, env=None) -> ReplayBufferSamples:
        samples = super().sample(batch_size, env=env)
        if self.relabel is None:
            return samples
        r = self.relabel(samples).reshape(-1, 1).to(samples.rewards.dtype)
        return samples._replace(rewards=r)

    # --------------------------------------------------------------- views for the players
    @property
    def size_used(self) -> int:
        """Filled positions (each holds ``n_envs`` transitions)."""
        return self.buffer_size if self.full else self.pos

    @property
    def transitions_used(self) -> int:
        """Stored transitions (env steps over all env copies)."""
        return self.size_used * self.n_envs

    def recent_indices(self, n: int) -> np.ndarray:
        """Positions holding the latest ``n`` transitions (ceil(n / n_envs) of them, at most
        ``size_used``), oldest first."""
        k = min(-(-int(n) // self.n_envs), self.size_used)
        return (self.pos - k + np.arange(k)) % self.buffer_size

    # --------------------------------------------------------------- checkpointing (no pickle)
    def state_tensors(self, prefix: str = "buffer") -> tuple[dict[str, torch.Tensor], dict]:
        """The used part of the arrays as tensors plus ``pos``/``full`` metadata."""
        n = self.size_used
        tensors = {f"{prefix}.{name}": torch.from_numpy(np.ascontiguousarray(getattr(self, name)[:n]))
                   for name in ARRAYS if getattr(self, name, None) is not None}
        return tensors, {"pos": int(self.pos), "full": bool(self.full), "size": int(self.buffer_size), "used": n,
                         "n_envs": int(self.n_envs)}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "buffer") -> None:
        n = int(meta["used"])
        saved_envs = saved_n_envs(tensors, meta, prefix)
        if saved_envs != self.n_envs:
            raise ValueError(f"saved buffer was filled by {saved_envs} env copies, this one by {self.n_envs}")
        if n > self.buffer_size:
            raise ValueError(f"saved buffer holds {n} transitions, this one only {self.buffer_size}")
        for name in ARRAYS:
            key = f"{prefix}.{name}"
            if key in tensors and getattr(self, name, None) is not None:
                getattr(self, name)[:n] = tensors[key].numpy().reshape(getattr(self, name)[:n].shape)
        self.pos, self.full = int(meta["pos"]) % self.buffer_size, bool(meta["full"]) and n == self.buffer_size


def saved_n_envs(tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "buffer") -> int:
    """Env copies of a saved buffer: its metadata, else (older checkpoints) the arrays' 2nd axis."""
    if meta.get("n_envs") is not None:
        return int(meta["n_envs"])
    obs = tensors.get(f"{prefix}.observations")
    return int(obs.shape[1]) if obs is not None and obs.dim() >= 2 else 1


def rows(buffer: ReplayBuffer, idx: np.ndarray, variant: str) -> np.ndarray:
    """Score-net inputs of the transitions at positions ``idx``, all env copies:
    (len(idx) * n_envs, D), position-major (time order, then env copy). Input: the reached state
    s' ('state') or [s, a] with a in SAC's [-1, 1] units ('state_action')."""
    m = len(idx) * buffer.n_envs
    if variant == "state":
        return buffer.next_observations[idx].reshape(m, -1).astype(np.float32)
    return np.concatenate([buffer.observations[idx].reshape(m, -1), buffer.actions[idx].reshape(m, -1)],
                          axis=1).astype(np.float32)


def recent_rows(buffer: RelabelingReplayBuffer, n: int, variant: str) -> np.ndarray:
    """Inputs of the latest ``min(n, transitions_used)`` transitions over all env copies (the
    learner FIFO), oldest first."""
    x = rows(buffer, buffer.recent_indices(n), variant)
    return x[max(0, len(x) - int(n)):]


def sample_inputs(samples: ReplayBufferSamples, variant: str) -> torch.Tensor:
    """Score-net inputs of a sampled batch, matching :func:`rows`."""
    if variant == "state":
        return samples.next_observations.float()
    return torch.cat([samples.observations, samples.actions], dim=1).float()
