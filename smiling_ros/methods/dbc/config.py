"""The ``dbc`` config section (:class:`DBCConfig`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from smiling_ros.config import one_of, positive
from smiling_ros.errors import UserError


@dataclass
class DBCConfig:
    """The ``dbc`` section of a config file."""

    T: int = 1000  # diffusion steps of the joint [s, a] model
    schedule: str = "linear"  # linear | cosine
    dm_hidden: int = 256  # score net width
    dm_layers: int = 3  # score net hidden layers
    dm_steps: int = 10000  # stage-1 gradient steps
    dm_lr: float = 1e-3
    hidden: list[int] = field(default_factory=lambda: [256, 256])  # policy MLP
    activation: str = "relu"
    steps: int = 10000  # stage-2 gradient steps
    lr: float = 1e-3
    batch_size: int = 256
    lambda_dm: float = 10.0  # weight of L_DM (paper: 0.2 .. 30 per task; 10 measured here); 0 = plain BC
    normalize_dm: bool = True  # L_DM = max(L_agent - L_expert, 0); false: L_agent alone (ablation)
    # L_DM at states jittered by this many data stds (0: at the recorded states, as published). BC fits
    # the recorded actions almost exactly, so the diffusion term has most to say between demonstrations.
    state_noise: float = 0.0
    log_every: int = 100

    def validate(self, where: str) -> None:
        for name in ("T", "dm_hidden", "dm_layers", "steps", "batch_size", "log_every"):
            positive(getattr(self, name), where, name)
        for name in ("dm_steps", "lambda_dm", "state_noise"):
            positive(getattr(self, name), where, name, allow_zero=True)
        positive(self.lr, where, "lr")
        positive(self.dm_lr, where, "dm_lr")
        one_of(self.schedule, ("linear", "cosine"), where, "schedule")
        if not self.hidden:
            raise UserError(f"{where}.hidden: at least one hidden layer")
