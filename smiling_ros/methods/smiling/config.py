"""Options of the ``smiling`` and ``expert`` config sections (strict: unknown keys are errors).

``smiling`` holds SMILING's own options plus the shared RL solver (``sac``) and the two
baselines that run on the same loop and data (``dac``, ``bc``). ``expert`` says where the
task's expert is (for reference returns and demo rollouts) and how ``train-expert`` trains one.
Defaults follow the paper where it runs on a CPU in reasonable time; departures are noted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from smiling_ros.config import one_of, positive
from smiling_ros.errors import UserError


@dataclass
class SacSection:
    """stable-baselines3 SAC. Paper (DMC): 2x1024, batch 1024, lr 1e-4, init temperature 0.1,
    5000 seed steps; here 2x256 / batch 256 / lr 3e-4 by default (CPU-sized)."""

    hidden: list[int] = field(default_factory=lambda: [256, 256])
    lr: float = 3e-4
    batch_size: int = 256
    buffer_size: int = 1_000_000
    learning_starts: int = 5000  # uniform-random env steps before the first update
    gamma: float = 0.99
    tau: float = 0.005
    ent_coef_init: float = 0.1  # initial temperature; learned (SB3 'auto_<init>')
    train_freq: int = 1
    gradient_steps: int = 1

    def validate(self, where: str) -> None:
        if not self.hidden or min(self.hidden) < 1:
            raise UserError(f"{where}.hidden: list of positive layer widths, got {self.hidden}")
        for name in ("lr", "batch_size", "buffer_size", "gamma", "tau", "ent_coef_init", "train_freq", "gradient_steps"):
            positive(getattr(self, name), where, name)
        positive(self.learning_starts, where, "learning_starts", allow_zero=True)
        if not 0 < self.gamma <= 1 or not 0 < self.tau <= 1:
            raise UserError(f"{where}: gamma and tau must be in (0, 1]")


@dataclass
class DacSection:
    """DAC baseline: discriminator D(x) on the same inputs as SMILING's score nets (states, or
    [s, a]); reward -log(1 - sigmoid(D)); gradient penalty on expert/learner interpolates."""

    hidden: int = 256
    layers: int = 1
    lr: float = 3e-4
    grad_penalty: float = 10.0
    update_every: int = 1000  # env steps between discriminator rounds
    updates: int = 100  # minibatch steps per round
    batch_size: int = 256

    def validate(self, where: str) -> None:
        for name in ("hidden", "layers", "lr", "update_every", "updates", "batch_size"):
            positive(getattr(self, name), where, name)
        positive(self.grad_penalty, where, "grad_penalty", allow_zero=True)


@dataclass
class BcSection:
    """Behavioural-cloning baseline (state-action demos): MSE on actions scaled to [-1, 1]."""

    hidden: list[int] = field(default_factory=lambda: [256, 256])
    steps: int = 10000
    lr: float = 1e-3
    batch_size: int = 256
    weight_decay: float = 0.0
    eval_every: int = 2000

    def validate(self, where: str) -> None:
        if not self.hidden or min(self.hidden) < 1:
            raise UserError(f"{where}.hidden: list of positive layer widths, got {self.hidden}")
        for name in ("steps", "lr", "batch_size", "eval_every"):
            positive(getattr(self, name), where, name)
        positive(self.weight_decay, where, "weight_decay", allow_zero=True)


@dataclass
class SmilingSection:
    """SMILING: score players + DS-cost reward + SAC. See smiling_ros/smiling/score.py."""

    variant: str = "state"  # 'state' (score nets on s') or 'state_action' (on [s, a])
    total_steps: int = 100_000  # env steps
    seed: Optional[int] = None  # default: the config's top-level seed
    # --- diffusion (the official T=5000 / 500-point grid wastes most evaluations on pure noise)
    schedule: str = "linear"  # 'linear' | 'cosine'
    T: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    min_abar: float = 1e-3  # timesteps are drawn only where abar_t > min_abar (0: all T) ...
    min_sigma: float = 0.5  # ... and the noise level sqrt(1 - abar_t) >= min_sigma (0: from t = 0)
    K: int = 4  # timesteps per state in the cost
    timesteps: str = "stratified"  # 'stratified' (one per stratum, per state) | 'grid' (official)
    # --- score nets (official: 1 hidden layer of 256, AdamW lr 5e-3, batch 1024)
    score_hidden: int = 256
    score_layers: int = 1
    score_lr: float = 5e-3
    score_batch: int = 1024
    expert_steps: int = 10_000  # expert-net pre-training steps (official ~20k)
    learner_every: int = 1000  # env steps between learner-net rounds (official 1001)
    learner_states: int = 100_000  # states per round (one epoch; official 100k)
    learner_fifo: int = 200_000  # the round draws from this many latest learner states
    reward_std: float = 0.1  # per-batch reward normalisation to this std (0: raw cost)
    reward_clip: float = 0.02  # winsorise each batch's raw cost at these quantiles before normalising (0: off)
    # True: a true termination also earns the batch's lowest reward forever after (absorbing state).
    # Off by default: it kept SMILING balancing in place on Hopper-v5, and in a DyDiff world model of the
    # arm it cut the policy's normalised return in MuJoCo from 0.90 to 0.39 (README, Benchmarks).
    absorbing: bool = False
    min_demo_states: int = 50
    # --- loop
    n_envs: int = 1  # simulator copies stepped together (in-process backends); step counts stay in env steps
    eval_every: int = 5000
    eval_episodes: int = 5
    checkpoint_every: int = 10_000
    log_every: int = 1000
    sac: SacSection = field(default_factory=SacSection)
    dac: DacSection = field(default_factory=DacSection)
    bc: BcSection = field(default_factory=BcSection)

    def validate(self, where: str) -> None:
        one_of(self.variant, ("state", "state_action"), where, "variant")
        one_of(self.schedule, ("linear", "cosine"), where, "schedule")
        one_of(self.timesteps, ("stratified", "grid"), where, "timesteps")
        for name in ("total_steps", "T", "K", "score_hidden", "score_layers", "score_lr", "score_batch",
                     "learner_every", "learner_states", "learner_fifo", "min_demo_states", "eval_every",
                     "checkpoint_every", "log_every"):
            positive(getattr(self, name), where, name)
        if self.n_envs < 1:
            raise UserError(f"{where}.n_envs: number of parallel simulator copies, must be >= 1, got {self.n_envs}")
        for name in ("expert_steps", "reward_std", "min_abar", "eval_episodes", "reward_clip"):
            positive(getattr(self, name), where, name, allow_zero=True)
        if not 0 < self.beta_start < self.beta_end < 1:
            raise UserError(f"{where}: need 0 < beta_start < beta_end < 1")
        if self.reward_clip >= 0.5:
            raise UserError(f"{where}.reward_clip: a quantile below 0.5, got {self.reward_clip}")
        if not 0 <= self.min_sigma < 1:
            raise UserError(f"{where}.min_sigma: in [0, 1), got {self.min_sigma}")
        if self.min_abar >= 1:
            raise UserError(f"{where}.min_abar: must be < 1, got {self.min_abar}")


@dataclass
class ExpertSection:
    """The task's expert: ``checkpoint`` is an mlp_policy file (relative paths: the config's
    folder, then the package's share dir), or 'scripted' for the task's scripted expert, or empty.
    ``train-expert`` uses ``steps`` and ``sac``."""

    checkpoint: str = ""
    steps: int = 100_000
    reference_episodes: int = 10  # rollouts for the random/expert reference returns
    eval_every: int = 10_000  # train-expert's periodic evaluation and checkpoints (env steps)
    eval_episodes: int = 5
    checkpoint_every: int = 10_000
    sac: SacSection = field(default_factory=SacSection)

    def validate(self, where: str) -> None:
        for name in ("steps", "reference_episodes", "eval_every", "checkpoint_every"):
            positive(getattr(self, name), where, name)
        positive(self.eval_episodes, where, "eval_episodes", allow_zero=True)


def smiling_section(cfg) -> SmilingSection:
    return cfg.section(SmilingSection, "smiling")


def expert_section(cfg) -> ExpertSection:
    return cfg.section(ExpertSection, "expert")
