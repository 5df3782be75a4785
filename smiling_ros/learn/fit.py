"""The one training loop every method's offline optimisation runs in (in the spirit of diffusion_policy).

A method supplies its model and ``compute_loss(batch) -> loss`` (a scalar tensor, or a dict of scalar
tensors with ``"loss"`` the one to minimise and the others logged); :class:`Fit` owns the rest:

- the optimiser (:func:`make_optimizer`: Adam or AdamW) and a torch LR scheduler
  (:func:`make_lr_scheduler`: constant, cosine, linear warm-up then cosine);
- EMA weights via ``torch.optim.swa_utils.AveragedModel`` (``ema_decay`` > 0; :attr:`Fit.averaged`);
- a non-finite check on every step's loss (one-line :class:`~smiling_ros.errors.UserError`);
- tqdm progress, a :class:`~smiling_ros.learn.logger.RunLogger` row (interval means and the LR)
  every ``log_every`` steps, and ``on_log(step, row)`` (return False to stop early);
- checkpoints every ``checkpoint_every`` steps (model, EMA, optimiser, scheduler, step) and
  ``resume``: a run continued from its checkpoint reaches the weights of an uninterrupted one
  when its batches are the same.

:meth:`Fit.step` is one update without the bookkeeping, for loops driven from outside (SMILING's
learner rounds, DAC's discriminator rounds inside the RL loop).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import load_checkpoint, load_optimizer_state, optimizer_state, save_checkpoint, strip
from smiling_ros.learn.logger import RunLogger

Loss = Union[torch.Tensor, dict[str, torch.Tensor]]

OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine")


@dataclass
class Optim:
    """Optimiser and LR schedule of one fit. ``min_lr`` is the cosine's final LR as a fraction of
    ``lr``; ``warmup`` the linear warm-up steps of ``warmup_cosine``; ``ema_decay`` 0: no EMA."""

    lr: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    min_lr: float = 0.0
    warmup: int = 0
    ema_decay: float = 0.0


def make_optimizer(params: Iterable[nn.Parameter], o: Optim) -> torch.optim.Optimizer:
    if o.optimizer == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    raise ValueError(f"optimizer: one of {', '.join(OPTIMIZERS)}, got {o.optimizer!r}")


def make_lr_scheduler(opt: torch.optim.Optimizer, o: Optim, steps: int) -> Optional[torch.optim.lr_scheduler.LRScheduler]:
    """torch's schedulers: ``cosine`` decays ``lr`` to ``min_lr * lr`` over ``steps``; ``warmup_cosine``
    ramps linearly from ``lr / warmup`` to ``lr`` over ``warmup`` steps, then decays to ``min_lr * lr``."""
    sched = torch.optim.lr_scheduler
    if o.schedule == "constant":
        return None
    if o.schedule == "cosine":
        return sched.CosineAnnealingLR(opt, max(steps, 1), eta_min=o.lr * o.min_lr)
    if o.schedule == "warmup_cosine":
        w = max(1, int(o.warmup))
        warm = sched.LinearLR(opt, start_factor=1.0 / w, end_factor=1.0, total_iters=max(w - 1, 1))
        cos = sched.CosineAnnealingLR(opt, max(steps - w, 1), eta_min=o.lr * o.min_lr)
        return sched.SequentialLR(opt, [warm, cos], milestones=[w])
    raise ValueError(f"schedule: one of {', '.join(LR_SCHEDULES)}, got {o.schedule!r}")


def ema_model(model: nn.Module, decay: float) -> AveragedModel:
    """EMA of ``model``'s parameters; the decay ramps as min(decay, (2 + n) / (11 + n)) with the
    number n of updates averaged so far, so the first averages follow the trained weights closely."""

    @torch.no_grad()
    def update(avg: Union[tuple[torch.Tensor, ...], list[torch.Tensor]],
               cur: Union[tuple[torch.Tensor, ...], list[torch.Tensor]], n: Union[torch.Tensor, int]) -> None:
        d = min(decay, (2.0 + float(n)) / (11.0 + float(n)))
        torch._foreach_mul_(list(avg), d)
        torch._foreach_add_(list(avg), list(cur), alpha=1 - d)

    ema = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    return ema


class Fit:
    """The loop (module docstring). ``params`` (default: ``model``'s) are what the optimiser updates;
    ``step_offset`` shifts logged steps and ``rename`` renames logged columns (stages logged into one file)."""

    def __init__(self, model: nn.Module, compute_loss: Callable[[Any], Loss], optim: Optim, steps: int, *,
                 name: str, params: Optional[Iterable[nn.Parameter]] = None, logger: Optional[RunLogger] = None,
                 log_every: int = 100, progress: bool = True, step_offset: int = 0,
                 rename: Optional[dict[str, str]] = None,
                 on_log: Optional[Callable[[int, dict[str, float]], Optional[bool]]] = None,
                 checkpoint: Optional[str | Path] = None, checkpoint_every: int = 0, resume: bool = False):
        self.model, self.compute_loss, self.optim, self.steps, self.name = model, compute_loss, optim, int(steps), name
        self.opt = make_optimizer(list(params) if params is not None else model.parameters(), optim)
        self.sched = make_lr_scheduler(self.opt, optim, self.steps)
        self.ema = ema_model(model, optim.ema_decay) if optim.ema_decay > 0 else None
        self.logger, self.log_every, self.progress, self.step_offset = logger, max(1, int(log_every)), progress, step_offset
        self.on_log, self.rename = on_log, dict(rename or {})
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_every = int(checkpoint_every)
        self.step_count = 0
        self.history: list[dict[str, float]] = []
        self.stopped = False
        if resume and self.checkpoint is not None and self.checkpoint.exists():
            self.load_state(self.checkpoint)

    @property
    def averaged(self) -> nn.Module:
        """The weights to use after training: the EMA's when there is one, else the model."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def step(self, batch: Any) -> dict[str, float]:
        """One update on ``batch``: loss, non-finite check, backward, optimiser, scheduler, EMA."""
        self.model.train()
        out = self.compute_loss(batch)
        terms = out if isinstance(out, dict) else {"loss": out}
        loss = terms["loss"]
        value = float(loss.detach())
        if not math.isfinite(value):
            raise UserError(f"{self.name}: non-finite loss at step {self.step_count + 1} (training diverged; "
                            f"check the data's scale or lower the learning rate)")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.sched is not None:
            self.sched.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step_count += 1
        return {k: (value if k == "loss" else float(v.detach())) for k, v in terms.items()}

    def run(self, batches: Iterator[Any] | Callable[[], Any]) -> list[dict[str, float]]:
        """Steps until ``steps`` (from where a resumed fit stands); ``batches`` is an iterator or a
        function returning the next batch. Returns the logged rows (interval means)."""
        from tqdm import tqdm

        nxt = batches if callable(batches) else (lambda: next(batches))  # type: ignore[arg-type]
        acc: dict[str, float] = {}
        n = 0
        bar = tqdm(total=self.steps, initial=self.step_count, desc=self.name, disable=not self.progress,
                   mininterval=1.0, dynamic_ncols=True)
        try:
            while self.step_count < self.steps and not self.stopped:
                for k, v in self.step(nxt()).items():
                    acc[k] = acc.get(k, 0.0) + v
                n += 1
                bar.update(1)
                s = self.step_count
                if s % self.log_every == 0 or s == self.steps:
                    row = {k: v / n for k, v in acc.items()}
                    row["lr"] = self.lr
                    acc, n = {}, 0
                    self.history.append({"step": s, **row})
                    if self.logger is not None:
                        self.logger.log(self.step_offset + s, **{self.rename.get(k, k): v for k, v in row.items()})
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if k != "lr"}, refresh=False)
                    if self.on_log is not None and self.on_log(s, row) is False:
                        self.stopped = True
                if self.checkpoint is not None and self.checkpoint_every and s % self.checkpoint_every == 0:
                    self.save_state(self.checkpoint)
        finally:
            bar.close()
        self.model.eval()
        return self.history

    # ------------------------------------------------------------------ resume
    def save_state(self, path: str | Path) -> Path:
        tensors = {f"model.{k}": v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v.detach().clone() for k, v in self.ema.state_dict().items()})
        ot, om = optimizer_state(self.opt, "opt")
        tensors.update(ot)
        meta = {"kind": "fit_state", "name": self.name, "step": self.step_count, "opt": om,
                "sched": self.sched.state_dict() if self.sched is not None else None}
        return save_checkpoint(path, tensors, meta)

    def load_state(self, path: str | Path) -> None:
        ck = load_checkpoint(path).require("fit_state")
        try:
            self.model.load_state_dict(strip(ck.tensors, "model"))
            if self.ema is not None:
                self.ema.load_state_dict(strip(ck.tensors, "ema"))
            load_optimizer_state(self.opt, ck.tensors, "opt", ck.meta["opt"])
            if self.sched is not None and ck.meta.get("sched") is not None:
                self.sched.load_state_dict(ck.meta["sched"])
            self.step_count = int(ck.meta["step"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise UserError(f"{path}: inconsistent training state ({str(exc).splitlines()[0]})") from None


@dataclass
class TrainResult:
    """What every method's ``fit(cfg, dataset, *, out, env_fn=None, callback=None)`` returns: the
    deployable policy's checkpoint (``policy``), every file written (``files``) and final figures."""

    policy: Path
    files: dict[str, Path] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)


def random_batches(n: int, batch_size: int, gen: Optional[torch.Generator] = None) -> Iterator[torch.Tensor]:
    """Endless index batches over range(n), reshuffled every epoch (a batch never spans two epochs)."""
    bs = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - bs + 1, bs):
            yield perm[i:i + bs]
