"""A stable-baselines3 replay buffer whose rewards are computed when a batch is sampled.

SMILING's and DAC's rewards depend on networks that keep changing, so storing a reward with
the transition would make it stale. :class:`RelabelingReplayBuffer` stores the env reward as
SB3 does (kept for logging and for plain SAC) and, when ``relabel`` is set, replaces the
sampled batch's rewards by ``relabel(samples) -> (B,)`` computed with the current networks.

The buffer also serves the score/discriminator players the latest learner inputs
(:func:`recent_rows`), so no second copy of the learner's states is kept.
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
        return self.buffer_size if self.full else self.pos

    def recent_indices(self, n: int) -> np.ndarray:
        """Indices of the latest ``min(n, size_used)`` transitions, oldest first."""
        n = min(int(n), self.size_used)
        return (self.pos - n + np.arange(n)) % self.buffer_size

    # --------------------------------------------------------------- checkpointing (no pickle)
    def state_tensors(self, prefix: str = "buffer") -> tuple[dict[str, torch.Tensor], dict]:
        """The used part of the arrays as tensors plus ``pos``/``full`` metadata."""
        n = self.size_used
        tensors = {f"{prefix}.{name}": torch.from_numpy(np.ascontiguousarray(getattr(self, name)[:n]))
                   for name in ARRAYS if getattr(self, name, None) is not None}
        return tensors, {"pos": int(self.pos), "full": bool(self.full), "size": int(self.buffer_size), "used": n}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], meta: dict, prefix: str = "buffer") -> None:
        n = int(meta["used"])
        if n > self.buffer_size:
            raise ValueError(f"saved buffer holds {n} transitions, this one only {self.buffer_size}")
        for name in ARRAYS:
            key = f"{prefix}.{name}"
            if key in tensors and getattr(self, name, None) is not None:
                getattr(self, name)[:n] = tensors[key].numpy().reshape(getattr(self, name)[:n].shape)
        self.pos, self.full = int(meta["pos"]) % self.buffer_size, bool(meta["full"]) and n == self.buffer_size


def rows(buffer: ReplayBuffer, idx: np.ndarray, variant: str) -> np.ndarray:
    """Score-net inputs of transitions ``idx`` (env 0): the reached state s' ('state') or
    [s, a] with a in SAC's [-1, 1] units ('state_action')."""
    if variant == "state":
        return buffer.next_observations[idx, 0].astype(np.float32)
    return np.concatenate([buffer.observations[idx, 0], buffer.actions[idx, 0]], axis=1).astype(np.float32)


def recent_rows(buffer: RelabelingReplayBuffer, n: int, variant: str) -> np.ndarray:
    """Inputs of the latest ``n`` transitions (the learner FIFO), oldest first."""
    return rows(buffer, buffer.recent_indices(n), variant)


def sample_inputs(samples: ReplayBufferSamples, variant: str) -> torch.Tensor:
    """Score-net inputs of a sampled batch, matching :func:`rows`."""
    if variant == "state":
        return samples.next_observations.float()
    return torch.cat([samples.observations, samples.actions], dim=1).float()
