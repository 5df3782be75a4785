"""The ``bridger`` config section (:class:`BridgerConfig`, with its CVAE source's :class:`CvaeConfig`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from smiling_ros.config import one_of, positive
from smiling_ros.errors import UserError
from smiling_ros.methods.bridger.interpolants import EPS_KINDS, KINDS, Interpolant
from smiling_ros.methods.bridger.nets import check_activation
from smiling_ros.methods.bridger.sampler import CLOCKS


@dataclass
class CvaeConfig:
    hidden: list[int] = field(default_factory=lambda: [512, 512, 512])
    latent: int = 64
    train_steps: int = 10000
    batch_size: int = 256
    lr: float = 1e-3
    beta: float = 0.1  # final KL weight; loss = 10 * MSE + beta * KL
    beta_warmup: float = 0.5  # fraction of training over which beta ramps linearly 0 -> beta

    def validate(self, where: str) -> None:
        for name in ("latent", "train_steps", "batch_size"):
            positive(getattr(self, name), where, name)
        positive(self.lr, where, "lr")
        positive(self.beta, where, "beta", allow_zero=True)
        if not 0 <= self.beta_warmup <= 1:
            raise UserError(f"{where}.beta_warmup: must lie in [0, 1], got {self.beta_warmup}")


@dataclass
class BridgerConfig:
    """The ``bridger`` section (see config/arm_reach.yaml for comments)."""

    source: str = "gaussian"  # default for --source: gaussian | cvae | heuristic | CHECKPOINT
    interpolant: str = "power3"
    noise_scale: float = 0.03
    eps: str = "1-t"
    steps: int = 5
    clock: str = "auto"
    final_noise: bool = False
    obs_window: int = 1
    chunk: int = 1
    execute: int = 0  # actions executed per chunk (0: all)
    hidden: list[int] = field(default_factory=lambda: [256, 256, 256])
    activation: str = "silu"
    train_steps: int = 20000
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    ema_decay: float = 0.999
    source_samples: int = 16  # stochastic sources: samples drawn per dataset row, reused across training
    log_every: int = 100
    eval_episodes: int = 20
    eval_steps: list[int] = field(default_factory=lambda: [1, 2, 5, 10])
    device: str = "auto"
    cvae: CvaeConfig = field(default_factory=CvaeConfig)

    def validate(self, where: str) -> None:
        one_of(self.interpolant, KINDS, where, "interpolant")
        one_of(self.eps, EPS_KINDS, where, "eps")
        one_of(self.clock, CLOCKS, where, "clock")
        check_activation(self.activation, f"{where}.activation")
        positive(self.noise_scale, where, "noise_scale")
        for name in ("steps", "obs_window", "chunk", "train_steps", "batch_size", "source_samples", "log_every"):
            positive(getattr(self, name), where, name)
        positive(self.eval_episodes, where, "eval_episodes", allow_zero=True)
        positive(self.lr, where, "lr")
        if not 0 <= self.execute <= self.chunk:
            raise UserError(f"{where}.execute: must lie in [0, chunk={self.chunk}], got {self.execute}")
        if not 0 <= self.ema_decay < 1:
            raise UserError(f"{where}.ema_decay: must lie in [0, 1), got {self.ema_decay}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise UserError(f"{where}.hidden: needs positive layer widths, got {self.hidden}")
        if any(n < 1 for n in self.eval_steps):
            raise UserError(f"{where}.eval_steps: step counts must be >= 1, got {self.eval_steps}")

    def interpolant_obj(self) -> Interpolant:
        return Interpolant(self.interpolant, self.noise_scale, self.eps)


def load_section(cfg) -> BridgerConfig:
    return cfg.section(BridgerConfig, "bridger")
