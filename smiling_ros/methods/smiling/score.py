"""SMILING's score players and the Diffusion-Score (DS) cost.

Inputs ``x`` are states (B, obs_dim) in the state-only variant or [s, a] (B, obs_dim + act_dim)
in the state-action variant (actions in SAC's [-1, 1] units), z-scored with statistics of the
expert data (:class:`~smiling_ros.data.dataset.Normalizer`) and clipped to +-``CLIP`` so that a
far-off learner state cannot blow up the nets.

- Expert player: a :class:`~smiling_ros.learn.diffusion.ScoreNet` trained by denoising score matching
  on the demonstrations, then frozen.
- Learner player: a ScoreNet warm-started from the expert net and updated Follow-the-Leader
  style: every ``learner_every`` env steps, one epoch on states drawn from the latest learner
  states (an approximation of "all learner data so far").
- Cost: for each state and each of K timesteps t_k with its own noise eps_k (paired per row),
  ``r(x) = mean_k [ mean_d (eps_L(x_k, t_k) - eps_k)^2 - mean_d (eps_E(x_k, t_k) - eps_k)^2 ]``
  with ``x_k = sqrt(abar) x + sqrt(1 - abar) eps_k``: positive where the expert net explains x
  better than the learner net. RL maximises r.

Differences from the public code, each deliberate:
- timesteps are drawn only where ``abar_t > min_abar`` (``NoiseSchedule.informative_timesteps``):
  with T = 5000 linear betas ~63% of the official 500-point grid sees pure noise, where both nets
  predict eps ~ x_t and the difference is zero signal plus estimator noise;
- a noise floor: timesteps start where the noise level sqrt(1 - abar_t) reaches ``min_sigma``
  (default 0.5 std of the normalised data). Below it the expert net's error measures how close x
  is to one of the few demonstration points it memorised, not to their distribution: on ArmReach
  with 10 demos, the expert's own path to a target no demo had scored far below standing still
  (r = -5.0 vs -0.7 with all t; +0.15 vs -0.21 with min_sigma = 0.5);
- K small (default 4) with stratified timesteps (one per stratum [k/K, (k+1)/K) of the informative
  range, drawn per state): unbiased for the uniform-t average with much lower variance than K
  iid draws, at 256*4 rows per SAC update instead of 1024*500;
- (t_k, eps_k) are paired with their own state (``repeat_interleave`` of states against a
  per-state timestep matrix); the public code pairs ``arange(..).repeat`` with ``obs.repeat``,
  which mis-aligns timesteps and states.
"""
from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from smiling_ros.data.dataset import Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.diffusion import NoiseSchedule, ScoreNet, make_schedule, per_sample_denoising_error
from smiling_ros.learn.fit import Fit, Optim

CLIP = 10.0  # |normalised input| bound


def t_max_of(schedule: NoiseSchedule, min_abar: float) -> int:
    """Upper bound (exclusive) of the timesteps used: the informative ones, or all when min_abar=0."""
    if min_abar <= 0:
        return schedule.T
    return max(1, schedule.informative_timesteps(min_abar))


def t_min_of(schedule: NoiseSchedule, min_sigma: float) -> int:
    """Lower bound of the timesteps used: the first t whose noise level sqrt(1 - abar_t) reaches
    ``min_sigma`` (in units of the normalised data's std); 0 when min_sigma = 0."""
    if min_sigma <= 0:
        return 0
    return int(((1 - schedule.abar).sqrt() < min_sigma).sum().item())


def timestep_range(schedule: NoiseSchedule, min_abar: float, min_sigma: float) -> tuple[int, int]:
    """[t_min, t_max) of the cost and of the score nets' training."""
    t_min, t_max = t_min_of(schedule, min_sigma), t_max_of(schedule, min_abar)
    if t_min >= t_max:
        raise UserError(f"smiling: min_sigma {min_sigma} leaves no timesteps below the min_abar {min_abar} bound "
                        f"(T={schedule.T}, {schedule.kind})")
    return t_min, t_max


def draw_timesteps(batch: int, K: int, t_max: int, mode: str = "stratified",
                   device: torch.device | str = "cpu", generator: Optional[torch.Generator] = None,
                   t_min: int = 0) -> torch.Tensor:
    """(batch, K) long timesteps in [t_min, t_max), n = t_max - t_min of them.

    'stratified': row b, column k uniform in stratum t_min + [k n / K, (k+1) n / K), drawn
    independently per row. 'grid': the same evenly spaced grid t_min + floor(k n / K) for every
    row (the official evaluation, with [0, T))."""
    n = t_max - t_min
    k = torch.arange(K, device=device, dtype=torch.float32)
    if mode == "grid":
        t = (k * n / K).floor().expand(batch, K)
    else:
        u = torch.rand(batch, K, device=device, generator=generator)
        t = ((k + u) * n / K).floor()
    return (t.long() + t_min).clamp_(t_min, t_max - 1)


class ScorePlayer:
    """One score net trained by denoising score matching on normalised inputs over the timesteps
    [t_min, t_max), on the shared loop (:class:`~smiling_ros.learn.fit.Fit`, AdamW)."""

    def __init__(self, x_dim: int, schedule: NoiseSchedule, t_max: int, hidden: int = 256, layers: int = 1,
                 lr: float = 5e-3, device: torch.device | str = "cpu", t_min: int = 0):
        self.device = torch.device(device)
        self.schedule = schedule.to(self.device)
        self.t_min, self.t_max = int(t_min), int(t_max)
        self.net = ScoreNet(x_dim, hidden=hidden, layers=layers).to(self.device)
        self.lr = lr
        self.trainer = Fit(self.net, self.loss, Optim(lr, "adamw", weight_decay=0.01), 0, name="score net",
                           progress=False)
        self.opt = self.trainer.opt

    def loss(self, x_n: torch.Tensor) -> torch.Tensor:
        t = torch.randint(self.t_min, self.t_max, (x_n.shape[0],), device=x_n.device)
        return per_sample_denoising_error(self.net, self.schedule, x_n, t, torch.randn_like(x_n)).mean()

    def step(self, x_n: torch.Tensor) -> float:
        """One gradient step on a batch of normalised inputs; returns the loss."""
        return self.trainer.step(x_n)["loss"]

    def fit(self, batches: Iterator[torch.Tensor], steps: int, progress: bool = False) -> list[float]:
        """``steps`` gradient steps on batches from ``batches``; returns the losses (means over 100 steps)."""
        self.trainer.steps, self.trainer.progress, self.trainer.log_every = self.trainer.step_count + steps, progress, 1
        rows = self.trainer.run(batches)[-steps:]
        self.net.eval()
        return [r["loss"] for r in rows]

    def load_from(self, other: "ScorePlayer") -> None:
        """Warm start: copy ``other``'s weights (optimiser state starts fresh)."""
        self.net.load_state_dict(other.net.state_dict())


def batch_iterator(x: torch.Tensor, batch: int, generator: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
    """Endless minibatches of rows of ``x``, reshuffled every epoch."""
    n = x.shape[0]
    while True:
        perm = torch.randperm(n, generator=generator, device="cpu").to(x.device)
        for i in range(0, n - batch + 1 if n >= batch else 1, batch):
            yield x[perm[i:i + batch]]


class DSCost:
    """The Diffusion-Score reward r(x) from an expert and a learner score net.

    ``raw(x)`` returns the unnormalised estimate (B,); ``__call__(x)`` applies the per-batch
    normalisation ``(r - mean) / (std + 1e-6) * reward_std`` (official: 0.1) when
    ``reward_std > 0`` (after winsorising at the ``reward_clip`` quantiles, see
    :func:`normalize_batch`). ``x`` is in robot units (normalised here)."""

    def __init__(self, expert: nn.Module, learner: nn.Module, schedule: NoiseSchedule, normalizer: Normalizer,
                 K: int = 4, t_max: Optional[int] = None, mode: str = "stratified", reward_std: float = 0.1,
                 reward_clip: float = 0.0, t_min: int = 0):
        self.expert, self.learner, self.schedule = expert, learner, schedule
        self.normalizer = normalizer
        self.K, self.mode, self.reward_std, self.reward_clip = int(K), mode, float(reward_std), float(reward_clip)
        self.t_min, self.t_max = int(t_min), int(t_max or schedule.T)
        self.rows = 0  # score-net input rows evaluated so far (per net)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalizer.normalize(x.float()).clamp(-CLIP, CLIP)

    @torch.no_grad()
    def raw(self, x: torch.Tensor, K: Optional[int] = None, normalized: bool = False) -> torch.Tensor:
        """(B, D) -> (B,) mean over K timesteps of err_learner - err_expert."""
        K = K or self.K
        x_n = x.float() if normalized else self.normalize(x)
        B = x_n.shape[0]
        t = draw_timesteps(B, K, self.t_max, self.mode, device=x_n.device, t_min=self.t_min)  # (B, K): row b's own
        x0 = x_n.repeat_interleave(K, dim=0)  # rows b*K .. b*K+K-1 are state b ...
        tt = t.reshape(-1)  # ... paired with t[b, 0..K-1]
        eps = torch.randn_like(x0)  # a fresh eps per (state, t_k) row, shared by both nets
        err_e = per_sample_denoising_error(self.expert, self.schedule, x0, tt, eps)
        err_l = per_sample_denoising_error(self.learner, self.schedule, x0, tt, eps)
        self.rows += x0.shape[0]
        return (err_l - err_e).view(B, K).mean(1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_batch(self.raw(x), self.reward_std, self.reward_clip)


def normalize_batch(r: torch.Tensor, std: float, clip: float = 0.0) -> torch.Tensor:
    """Per-batch reward normalisation: zero mean, standard deviation ``std`` (official SMILING:
    0.1); identity for std <= 0.

    ``clip`` > 0 first winsorises the batch at its ``clip`` and ``1 - clip`` quantiles. The raw cost
    has a heavy tail: states far from everything either net saw (early random exploration) get
    costs tens of times the typical spread, and with plain mean/std normalisation those few rows
    set the scale and squash the differences that matter (measured on ArmReach with timesteps from
    t = 0: median -0.3, inter-quartile range 0.3, 1% quantile -7, minimum -43; the noise floor
    ``min_sigma`` removes most of that tail: median -0.06, IQR 0.15, 1% quantile -0.9)."""
    if std <= 0 or r.numel() < 2:
        return r
    if clip > 0:
        lo, hi = torch.quantile(r, torch.tensor([clip, 1 - clip], dtype=r.dtype, device=r.device))
        r = r.clamp(lo, hi)
    return (r - r.mean()) / (r.std() + 1e-6) * std


def due(step: int, every: int, prev_step: Optional[int] = None, force: bool = False) -> bool:
    """True when a multiple of ``every`` lies in (prev_step, step] (default prev_step = step - 1)."""
    prev = step - 1 if prev_step is None else prev_step
    return force or step // every > prev // every


def expert_inputs(obs: np.ndarray, act: Optional[np.ndarray], variant: str, low: np.ndarray, high: np.ndarray
                  ) -> np.ndarray:
    """Demo rows for the score nets: states, or [s, a] with actions mapped to [-1, 1]."""
    if variant == "state":
        return np.asarray(obs, np.float32)
    a = 2.0 * (np.asarray(act, np.float32) - low) / (high - low) - 1.0
    return np.concatenate([obs, np.clip(a, -1, 1)], axis=1).astype(np.float32)


def pretrain_expert(x_expert: np.ndarray, opts, device: torch.device, progress: bool = False,
                    seed: int = 0) -> tuple[ScorePlayer, Normalizer, list[float]]:
    """Fit and freeze the expert score net on demo inputs ``x_expert`` (N, D). Returns the
    player, the input normaliser and the loss curve."""
    norm = Normalizer.fit(x_expert)
    schedule = make_schedule(opts.T, opts.schedule, opts.beta_start, opts.beta_end)
    t_min, t_max = timestep_range(schedule, opts.min_abar, opts.min_sigma)
    player = ScorePlayer(x_expert.shape[1], schedule, t_max, opts.score_hidden, opts.score_layers, opts.score_lr, device,
                         t_min)
    x = torch.as_tensor(norm.normalize(x_expert), device=device).clamp(-CLIP, CLIP)
    g = torch.Generator().manual_seed(seed)
    player.trainer.name = "expert score net"
    losses = player.fit(batch_iterator(x, min(opts.score_batch, x.shape[0]), g), opts.expert_steps, progress)
    for p in player.net.parameters():
        p.requires_grad_(False)
    return player, norm, losses


class SmilingReward:
    """The two-player game as a reward model for the RL loop (see :mod:`smiling_ros.methods.smiling.trainer`).

    ``x_expert``: demo inputs (N, D) for the chosen ``opts.variant``. The expert net is trained
    in :meth:`setup` (or restored by :meth:`load_state`); every ``opts.learner_every`` env steps
    :meth:`update` runs one learner round on the latest ``opts.learner_fifo`` learner inputs.
    """

    name = "smiling"

    def __init__(self, x_expert: np.ndarray, opts, device: torch.device, seed: int = 0):
        self.opts, self.device, self.seed = opts, device, seed
        self.variant = opts.variant
        self.x_expert = np.asarray(x_expert, np.float32)
        # set by setup() or load_state()
        self.expert: ScorePlayer
        self.learner: ScorePlayer
        self.cost: DSCost
        self.normalizer: Normalizer
        self.rounds = 0
        self.metrics: dict[str, float] = {}
        self._gen = torch.Generator().manual_seed(seed + 1)

    @property
    def score_rows(self) -> int:
        """Score-net input rows the cost has evaluated so far (per net)."""
        return self.cost.rows

    # ------------------------------------------------------------------ setup / state
    def setup(self, progress: bool = False) -> None:
        self.expert, self.normalizer, losses = pretrain_expert(self.x_expert, self.opts, self.device, progress, self.seed)
        self.metrics["expert_loss"] = float(np.mean(losses[-100:])) if losses else float("nan")
        self._make_learner()

    def _make_learner(self) -> None:
        o = self.opts
        self.learner = ScorePlayer(self.x_expert.shape[1], self.expert.schedule, self.expert.t_max, o.score_hidden,
                                   o.score_layers, o.score_lr, self.device, self.expert.t_min)
        self.learner.load_from(self.expert)  # warm start
        self.learner.net.eval()
        self.cost = DSCost(self.expert.net, self.learner.net, self.expert.schedule, self.normalizer, o.K,
                           self.expert.t_max, o.timesteps, o.reward_std, o.reward_clip, self.expert.t_min)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        from smiling_ros.learn.checkpoint import optimizer_state

        t = {f"score.expert.{k}": v for k, v in self.expert.net.state_dict().items()}
        t.update({f"score.learner.{k}": v for k, v in self.learner.net.state_dict().items()})
        ot, om = optimizer_state(self.learner.opt, "score.learner_opt")
        t.update(ot)
        return t, {"rounds": self.rounds, "normalizer": self.normalizer.to_dict(), "learner_opt": om,
                   "net": self.expert.net.hparams(), "t_max": self.expert.t_max, "t_min": self.expert.t_min,
                   "metrics": self.metrics}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        from smiling_ros.learn.checkpoint import load_optimizer_state, strip

        o = self.opts
        self.normalizer = Normalizer.from_dict(meta["normalizer"])
        schedule = make_schedule(o.T, o.schedule, o.beta_start, o.beta_end)
        self.expert = ScorePlayer(self.x_expert.shape[1], schedule, int(meta["t_max"]), o.score_hidden, o.score_layers,
                                  o.score_lr, self.device, int(meta.get("t_min", 0)))
        self.expert.net.load_state_dict(strip(tensors, "score.expert"))
        self.expert.net.eval()
        for p in self.expert.net.parameters():
            p.requires_grad_(False)
        self._make_learner()
        self.learner.net.load_state_dict(strip(tensors, "score.learner"))
        load_optimizer_state(self.learner.opt, tensors, "score.learner_opt", meta["learner_opt"])
        self.rounds = int(meta["rounds"])
        self.metrics.update(meta.get("metrics", {}))

    # ------------------------------------------------------------------ game
    def reward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised DS reward of a sampled batch of inputs (B, D) -> (B,)."""
        r_raw = self.cost.raw(x)
        self.metrics["reward_raw_mean"] = float(r_raw.mean())
        self.metrics["reward_raw_std"] = float(r_raw.std()) if r_raw.numel() > 1 else 0.0
        return normalize_batch(r_raw, self.cost.reward_std, self.cost.reward_clip)

    @staticmethod
    def absorbing_reward(r: torch.Tensor) -> torch.Tensor:
        """Reward of the absorbing state after a termination: the expert never reaches it, so it
        gets the batch's lowest reward."""
        return r.min()

    def update(self, step: int, buffer, learning_starts: int = 0, prev_step: Optional[int] = None
               ) -> Optional[dict[str, float]]:
        """Learner round when due (every ``learner_every`` env steps, and once when SAC's updates
        start): ceil(learner_states / score_batch) AdamW steps on batches drawn (with replacement)
        from the latest ``learner_fifo`` learner inputs in ``buffer``."""
        if not due(step, self.opts.learner_every, prev_step, self.rounds == 0 and step >= learning_starts) \
                or buffer.size_used == 0:
            return None
        from smiling_ros.methods.smiling.buffer import recent_rows

        o = self.opts
        fifo = recent_rows(buffer, o.learner_fifo, self.variant)
        x = torch.as_tensor(self.normalizer.normalize(fifo), device=self.device).clamp(-CLIP, CLIP)
        steps = max(1, -(-o.learner_states // o.score_batch))
        bs = min(o.score_batch, x.shape[0]) if x.shape[0] >= o.score_batch else o.score_batch
        losses = []
        self.learner.net.train()
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (bs,), generator=self._gen).to(self.device)
            losses.append(self.learner.step(x[idx]))
        self.learner.net.eval()
        self.rounds += 1
        self.metrics.update(learner_loss=float(np.mean(losses)), learner_loss_first=losses[0],
                            learner_loss_last=losses[-1], learner_rounds=self.rounds)
        return dict(self.metrics)
