"""The ``dydiff`` config section (:class:`DyDiffConfig`, with its offline learner's :class:`TD3BCConfig`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from smiling_ros.config import one_of, positive
from smiling_ros.errors import UserError


@dataclass
class TD3BCConfig:
    """TD3+BC (Fujimoto & Gu 2021) hyper-parameters (``dydiff.td3bc``)."""

    steps: int = 50000
    batch_size: int = 256
    alpha: float = 2.5  # Q weight lambda = alpha / mean|Q|
    gamma: float = 0.99
    tau: float = 0.005
    lr: float = 3e-4
    policy_noise: float = 0.2  # target policy smoothing, in [-1, 1] action units
    noise_clip: float = 0.5
    policy_freq: int = 2
    hidden: list[int] = field(default_factory=lambda: [256, 256])

    def validate(self, where: str) -> None:
        for name in ("steps", "batch_size", "policy_freq"):
            positive(getattr(self, name), where, name)
        if not 0 < self.gamma < 1 or not 0 < self.tau <= 1:
            raise UserError(f"{where}: gamma must be in (0, 1) and tau in (0, 1]")


@dataclass
class DyDiffConfig:
    """The ``dydiff`` section of a config file."""

    horizon: int = 32  # H: window length in steps (paper 50..100; shorter keeps CPU training short)
    T: int = 50  # diffusion steps of the window model
    schedule: str = "linear"  # linear (betas scaled to T) | cosine
    predict: str = "x0"  # window net output: x0 (clean window) | eps (noise)
    hidden: int = 512  # window score net
    layers: int = 3
    steps: int = 20000  # window model gradient steps
    lr: float = 1e-3
    batch_size: int = 256
    ensemble_size: int = 5
    ensemble_hidden: int = 200
    ensemble_layers: int = 3
    ensemble_steps: int = 10000
    reward: str = "auto"  # auto (learned if the dataset has rewards, else cost) | learned | cost
    reward_steps: int = 5000
    refinements: int = 2  # K
    mix: float = 0.5  # weight of each new window sample when averaging with the previous states
    keep_fraction: float = 0.6  # best rollouts kept, by summed reward
    rollouts_per_round: int = 256
    rollout_every: int = 2000  # offline-learner steps between rollout rounds
    real_fraction: float = 0.6  # share of real transitions in each offline-learner batch
    buffer_size: int = 200000  # synthetic transitions kept (FIFO)
    support_margin: float = 1.0  # states beyond data min/max by this many stds are out of support
    # The model halts where the ensemble disagrees more than this multiple of the most it disagrees on
    # any recorded transition (0: never): the env terminates there, rollouts are cut there.
    halt_disagreement: float = 1.0
    env_horizon: int = 0  # world-model env episode length; 0: task.max_episode_steps, else 1000
    env_refine: bool = True  # world-model env: correct the ensemble with the window model every H-1 steps
    log_every: int = 100
    td3bc: TD3BCConfig = field(default_factory=TD3BCConfig)

    def validate(self, where: str) -> None:
        if self.horizon < 2:
            raise UserError(f"{where}.horizon: must be >= 2, got {self.horizon}")
        for name in ("T", "hidden", "layers", "batch_size", "ensemble_size", "ensemble_hidden", "ensemble_layers",
                     "rollouts_per_round", "rollout_every", "buffer_size", "log_every"):
            positive(getattr(self, name), where, name)
        for name in ("steps", "ensemble_steps", "reward_steps", "refinements", "env_horizon"):
            positive(getattr(self, name), where, name, allow_zero=True)
        positive(self.halt_disagreement, where, "halt_disagreement", allow_zero=True)
        for name in ("mix", "keep_fraction", "real_fraction"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise UserError(f"{where}.{name}: must be in [0, 1], got {v}")
        one_of(self.schedule, ("linear", "cosine"), where, "schedule")
        one_of(self.predict, ("x0", "eps"), where, "predict")
        one_of(self.reward, ("auto", "learned", "cost"), where, "reward")
