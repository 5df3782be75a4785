"""BridgerPolicy: source sample -> N BRIDGER steps -> robot action (checkpoint kind ``bridger``).

``act(obs)``: obs (obs_dim,) -> action (act_dim,) or (B, obs_dim) -> (B, act_dim), robot units,
clamped to [action_low, action_high]. Per call (one planning step):

1. normalise the observation, push it into the observation window (``window`` latest
   observations; after ``reset`` the window is filled with the first one);
2. x0 = source.sample(obs), normalised (repeated ``chunk`` times when planning a chunk);
3. ``steps`` Euler-Maruyama steps of the sampler (sampler.py) with the EMA velocity/denoiser net;
4. unnormalise, clamp; with ``chunk`` > 1 the first ``execute`` actions of the chunk are
   returned by this and the following calls before planning again.

Single observations run a numpy forward of the net (nets.NumpyForward) on the CPU; batches run
the torch net on ``device``.

Bad input: an observation of the wrong size or containing NaN/inf raises
:class:`~smiling_ros.errors.UserError` (nothing is returned, the internal state is unchanged).
A non-finite action is never returned: if one were produced (it cannot be from finite weights
and a finite observation short of overflow), ``act`` raises UserError instead.

``steps`` may be changed at run time (``policy.steps = 2``). ``plan(obs)`` returns the whole
chunk (chunk, act_dim) for a caller that times the actions itself (smiling_ros.control.stream).
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from smiling_ros.data.dataset import Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import Checkpoint, load_module, module_tensors, save_checkpoint
from smiling_ros.methods.bridger.interpolants import Interpolant
from smiling_ros.methods.bridger.nets import BridgerNet, NumpyForward, build_net
from smiling_ros.methods.bridger.sampler import Grid, make_grid, sample_numpy, sample_torch
from smiling_ros.methods.bridger.sources import Source, source_from_checkpoint, source_to_checkpoint


class BridgerPolicy:
    kind = "bridger"
    numpy_single = True  # single observations: numpy forward on the CPU (False: the torch net on ``device``)

    def __init__(self, net: BridgerNet, interp: Interpolant, source: Source, obs_norm: Normalizer,
                 act_norm: Normalizer, low: np.ndarray, high: np.ndarray, steps: int = 5, window: int = 1,
                 chunk: int = 1, execute: int = 0, clock: str = "auto", final_noise: bool = False,
                 meta: Optional[dict[str, Any]] = None, device: str | torch.device = "cpu",
                 seed: Optional[int] = None):
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.interp, self.source = interp, source
        self.obs_norm, self.act_norm = obs_norm, act_norm
        self.obs_dim, self.act_dim = obs_norm.dim, act_norm.dim
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)
        self.window, self.chunk = int(window), int(chunk)
        self.execute = int(execute) if execute else self.chunk
        self.clock, self.final_noise = clock, bool(final_noise)
        self.meta = dict(meta or {})
        self._check_dims()
        self._fwd = NumpyForward(self.net) if self.net.x_dim else None
        self._grids: dict[int, tuple[Grid, np.ndarray]] = {}
        self.steps = steps
        self.seed(seed)
        self.reset()

    # ------------------------------------------------------------------ configuration
    def _check_dims(self) -> None:
        where = self.meta.get("path", "bridger")
        if self.net.x_dim != self.act_dim * self.chunk or self.net.cond_dim != self.obs_dim * self.window:
            raise UserError(f"{where}: net dims ({self.net.x_dim}, {self.net.cond_dim}) do not match act_dim*chunk="
                            f"{self.act_dim * self.chunk}, obs_dim*window={self.obs_dim * self.window}")
        if (self.source.obs_dim, self.source.act_dim) != (self.obs_dim, self.act_dim):
            raise UserError(f"{where}: source '{self.source.name}' has obs/act dims ({self.source.obs_dim}, "
                            f"{self.source.act_dim}), the policy ({self.obs_dim}, {self.act_dim})")
        if self.low.shape != (self.act_dim,) or self.high.shape != (self.act_dim,):
            raise UserError(f"{where}: action bounds have {self.low.shape} elements, expected {self.act_dim}")
        if not 1 <= self.execute <= self.chunk:
            raise UserError(f"{where}: execute must lie in [1, chunk={self.chunk}], got {self.execute}")

    @property
    def steps(self) -> int:
        return self._steps

    @steps.setter
    def steps(self, n: int) -> None:
        if n not in self._grids:
            grid = make_grid(self.interp, n, self.clock, self.final_noise)
            self._grids[n] = (grid, self._numpy_forward().time_bias(grid.t))
        self._steps = int(n)
        self._grid, self._time_bias = self._grids[n]

    def seed(self, seed: Optional[int]) -> None:
        """Seed the sampler noise (numpy and torch paths) and the source."""
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator(device=self.device)
        if seed is not None:
            self.gen.manual_seed(int(seed))
        else:
            self.gen.seed()
        if hasattr(self.source, "seed"):
            self.source.seed(None if seed is None else seed + 1)
        elif hasattr(self.source, "rng"):
            self.source.rng = np.random.default_rng(None if seed is None else seed + 1)

    def reset(self, obs: Optional[np.ndarray] = None) -> None:
        """Start an episode: forget the observation window and any planned chunk."""
        self._hist: Optional[np.ndarray] = None  # (B, W, obs_dim) normalised window, or (W, obs_dim)
        self._queue: Optional[np.ndarray] = None  # planned actions not yet returned
        self._qi = 0

    # ------------------------------------------------------------------ acting
    def _check_obs(self, obs: Any) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32)
        if x.ndim not in (1, 2) or x.shape[-1] != self.obs_dim:
            raise UserError(f"bridger policy: observation has shape {x.shape}, expected ({self.obs_dim},) or "
                            f"(B, {self.obs_dim})")
        bad = ~np.isfinite(x)
        if bad.any():
            idx = np.argwhere(bad)[0]
            raise UserError(f"bridger policy: observation contains NaN or inf (element {tuple(int(i) for i in idx)})")
        return x

    def _push(self, on: np.ndarray) -> np.ndarray:
        """Add normalised obs (B, D) to the window; returns the flattened condition (B, W*D)."""
        if self._hist is None or self._hist.shape[0] != on.shape[0]:
            self._hist = np.repeat(on[:, None, :], self.window, axis=1)
            self._queue = None
        else:
            self._hist = np.concatenate([self._hist[:, 1:], on[:, None, :]], axis=1)
        return self._hist.reshape(on.shape[0], -1)

    def act(self, obs: np.ndarray) -> np.ndarray:
        x = self._check_obs(obs)
        single = x.ndim == 1
        xb = x[None] if single else x
        on = self.obs_norm.normalize(xb).astype(np.float32)
        hist_before = self._hist
        cond = self._push(on)
        if self._queue is not None and self._qi < self.execute and self._queue.shape[0] == len(xb):
            a = self._queue[:, self._qi]
            self._qi += 1
        else:
            try:
                plan = self._plan(xb, cond)  # (B, chunk, A) robot units, clamped
            except UserError:
                self._hist = hist_before
                raise
            self._queue, self._qi = plan, 1
            a = plan[:, 0]
        return a[0].copy() if single else a.copy()

    def plan(self, obs: np.ndarray) -> np.ndarray:
        """The whole chunk planned for one observation: (obs_dim,) -> (chunk, act_dim), robot units,
        clamped; action k is for k policy steps after the observation. The observation enters the
        window as with :meth:`act`; a chunk being executed by ``act`` is dropped."""
        x = self._check_obs(obs)
        if x.ndim != 1:
            raise UserError(f"bridger policy: plan takes one observation ({self.obs_dim},), got {x.shape}")
        xb = x[None]
        on = self.obs_norm.normalize(xb).astype(np.float32)
        hist_before = self._hist
        cond = self._push(on)
        try:
            plan = self._plan(xb, cond)
        except UserError:
            self._hist = hist_before
            raise
        self._queue, self._qi = None, 0
        return plan[0].copy()

    def _plan(self, obs: np.ndarray, cond: np.ndarray) -> np.ndarray:
        B = len(obs)
        raw = self.source.sample(obs[0])[None] if B == 1 else self.source.sample(obs)
        x0 = self.act_norm.normalize(np.asarray(raw, np.float32).reshape(B, -1))  # (B, A)
        if x0.shape != (B, self.act_dim):
            raise UserError(f"bridger policy: source '{self.source.name}' returned shape {x0.shape}, expected {(B, self.act_dim)}")
        if self.chunk > 1:
            x0 = np.tile(x0, (1, self.chunk))
        if B == 1 and self.numpy_single:
            xn = self._sample_one(x0[0], cond[0])[None]
        else:
            with torch.inference_mode():
                xn = sample_torch(self.net, self._grid, torch.as_tensor(x0, device=self.device),
                                  torch.as_tensor(cond, device=self.device), self.gen).cpu().numpy()
        a = self.act_norm.unnormalize(xn.reshape(B, self.chunk, self.act_dim))
        if not np.isfinite(a).all():
            raise UserError("bridger policy: the sampler produced a non-finite action; refusing to return it")
        return np.clip(a, self.low, self.high).astype(np.float32)

    def _sample_one(self, x0: np.ndarray, cond: np.ndarray) -> np.ndarray:
        fwd = self._numpy_forward()
        return sample_numpy(fwd, self._time_bias, self._grid, x0, fwd.cond_bias(cond), self.rng)

    def _numpy_forward(self) -> NumpyForward:
        if self._fwd is None:
            raise UserError("bridger policy: a net without actions has no forward pass")
        return self._fwd

    def sample_normalized(self, obs: np.ndarray, x0: Optional[np.ndarray] = None) -> np.ndarray:
        """Stateless batch sampling for analysis: (B, obs_dim) robot units, optional normalised
        x0 (B, act_dim*chunk) -> normalised (B, act_dim*chunk); window = the observation repeated."""
        x = self._check_obs(obs)
        xb = x[None] if x.ndim == 1 else x
        on = self.obs_norm.normalize(xb).astype(np.float32)
        cond = np.tile(on, (1, self.window))
        if x0 is None:
            x0 = np.tile(self.act_norm.normalize(self.source.sample(xb)), (1, self.chunk)).astype(np.float32)
        with torch.inference_mode():
            return sample_torch(self.net, self._grid, torch.as_tensor(x0, device=self.device),
                                torch.as_tensor(cond, device=self.device), self.gen).cpu().numpy()

    # ------------------------------------------------------------------ checkpoint
    def checkpoint_meta(self) -> dict[str, Any]:
        src_meta, _ = source_to_checkpoint(self.source)
        return {
            "kind": self.kind,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "net": self.net.hparams(),
            "interpolant": self.interp.to_dict(),
            "steps": self._steps,
            "clock": self.clock,
            "final_noise": self.final_noise,
            "window": self.window,
            "chunk": self.chunk,
            "execute": self.execute,
            "obs_norm": self.obs_norm.to_dict(),
            "act_norm": self.act_norm.to_dict(),
            "action_low": self.low.tolist(),
            "action_high": self.high.tolist(),
            "source": src_meta,
        }

    def save(self, path, extra_meta: Optional[dict[str, Any]] = None):
        _, src_tensors = source_to_checkpoint(self.source)
        keep = {k: v for k, v in self.meta.items() if k not in ("format", "versions", "path")}
        meta = {**keep, **(extra_meta or {}), **self.checkpoint_meta()}
        return save_checkpoint(path, {**module_tensors("net", self.net), **src_tensors}, meta)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, device: str | torch.device = "cpu") -> "BridgerPolicy":
        m = ckpt.meta
        try:
            net = load_module(ckpt, "net", lambda: build_net(m["net"]), "bridger net")
            act_norm = Normalizer.from_dict(m["act_norm"])
            source = source_from_checkpoint(ckpt, act_norm, device)
            return cls(net, Interpolant.from_dict(m["interpolant"]), source, Normalizer.from_dict(m["obs_norm"]),
                       act_norm, np.asarray(m["action_low"]), np.asarray(m["action_high"]), int(m["steps"]),
                       int(m["window"]), int(m["chunk"]), int(m["execute"]), str(m["clock"]), bool(m["final_noise"]),
                       {**m, "path": str(ckpt.path)}, device)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise UserError(f"{ckpt.path}: inconsistent bridger checkpoint ({str(exc).splitlines()[0]})") from None
