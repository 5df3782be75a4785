"""DAC baseline (Kostrikov et al. 2019) on SMILING's loop: same SAC, demos, seeds and env steps.

A discriminator D(x) (MLP, ``hidden`` x ``layers``, LeakyReLU) separates expert inputs (label 1)
from the latest learner inputs (label 0, the same FIFO SMILING's learner net uses) with the
logistic loss plus a gradient penalty ``grad_penalty * (||grad_x D(x_hat)|| - 1)^2`` on random
interpolates of expert and learner batches. Reward ``-log(1 - sigmoid(D(x)))`` = softplus(D(x)),
computed at sample time with the current D. Inputs: states s' (state-only) or [s, a], z-scored
with the expert statistics. Absorbing-state handling of the original DAC is not implemented.

Python API: :func:`train_dac` (same arguments as :func:`smiling_ros.methods.smiling.trainer.train`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from smiling_ros.data.dataset import Normalizer
from smiling_ros.learn.fit import Fit, Optim
from smiling_ros.learn.nets import mlp

CLIP = 10.0


class Discriminator(nn.Module):
    def __init__(self, x_dim: int, hidden: int = 256, layers: int = 1):
        super().__init__()
        self.mlp = mlp([x_dim] + [hidden] * layers + [1], "leaky_relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised -> (B,) logits."""
        return self.mlp(x).squeeze(-1)


class DacReward:
    """Discriminator player with the reward-model interface of :class:`~smiling_ros.methods.smiling.score.SmilingReward`."""

    name = "dac"

    def __init__(self, x_expert: np.ndarray, opts, device: torch.device, seed: int = 0):
        self.opts, self.dac, self.device, self.variant = opts, opts.dac, device, opts.variant
        self.x_expert = np.asarray(x_expert, np.float32)
        self.normalizer = Normalizer.fit(self.x_expert)
        self.disc = Discriminator(self.x_expert.shape[1], self.dac.hidden, self.dac.layers).to(device)
        self.trainer = Fit(self.disc, self._loss, Optim(self.dac.lr), 0, name="DAC discriminator", progress=False)
        self.opt = self.trainer.opt
        self.rounds = 0
        self.metrics: dict[str, float] = {}
        self._gen = torch.Generator().manual_seed(seed + 2)
        self._xe = torch.as_tensor(self._norm(self.x_expert), device=device)

    def _norm(self, x):
        n = self.normalizer.normalize(x)
        return n.clamp(-CLIP, CLIP) if isinstance(n, torch.Tensor) else np.clip(n, -CLIP, CLIP)

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Logistic loss (expert 1, learner 0) plus the gradient penalty on random interpolates."""
        e, lrn = batch
        de, dl = self.disc(e), self.disc(lrn)
        bce = F.binary_cross_entropy_with_logits(de, torch.ones_like(de)) + \
            F.binary_cross_entropy_with_logits(dl, torch.zeros_like(dl))
        alpha = torch.rand(e.shape[0], 1, generator=self._gen).to(self.device)
        mix = (alpha * e + (1 - alpha) * lrn).requires_grad_(True)
        grad = torch.autograd.grad(self.disc(mix).sum(), mix, create_graph=True)[0]
        gp = ((grad.norm(dim=1) - 1) ** 2).mean()
        acc = ((de > 0).float().mean() + (dl < 0).float().mean()).detach() / 2
        return {"loss": bce + self.dac.grad_penalty * gp, "bce": bce, "gp": gp, "acc": acc}

    def setup(self, progress: bool = False) -> None:
        pass

    @torch.no_grad()
    def reward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.softplus(self.disc(self._norm(x)))  # -log(1 - sigmoid(D))
        self.metrics["reward_raw_mean"] = float(r.mean())
        return r

    @staticmethod
    def absorbing_reward(r: torch.Tensor) -> float:
        """-log(1 - sigmoid(D)) -> 0 where D rejects: the expert never reaches the absorbing state."""
        return 0.0

    def update(self, step: int, buffer, learning_starts: int = 0, prev_step: Optional[int] = None
               ) -> Optional[dict[str, float]]:
        from smiling_ros.methods.smiling.score import due

        if not due(step, self.dac.update_every, prev_step, self.rounds == 0 and step >= learning_starts) \
                or buffer.size_used == 0:
            return None
        from smiling_ros.methods.smiling.buffer import recent_rows

        xl = torch.as_tensor(self._norm(recent_rows(buffer, self.opts.learner_fifo, self.variant)), device=self.device)
        bs = self.dac.batch_size
        rows = []
        for _ in range(self.dac.updates):
            e = self._xe[torch.randint(0, self._xe.shape[0], (bs,), generator=self._gen).to(self.device)]
            lrn = xl[torch.randint(0, xl.shape[0], (bs,), generator=self._gen).to(self.device)]
            rows.append(self.trainer.step((e, lrn)))
        losses, gps, accs = ([r[k] for r in rows] for k in ("bce", "gp", "acc"))
        self.rounds += 1
        self.metrics.update(disc_loss=float(np.mean(losses)), disc_gp=float(np.mean(gps)),
                            disc_acc=float(np.mean(accs)), disc_rounds=self.rounds)
        return dict(self.metrics)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        from smiling_ros.learn.checkpoint import optimizer_state

        t = {f"dac.disc.{k}": v for k, v in self.disc.state_dict().items()}
        ot, om = optimizer_state(self.opt, "dac.opt")
        t.update(ot)
        return t, {"rounds": self.rounds, "opt": om, "normalizer": self.normalizer.to_dict(), "metrics": self.metrics}

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        from smiling_ros.learn.checkpoint import load_optimizer_state, strip

        self.disc.load_state_dict(strip(tensors, "dac.disc"))
        load_optimizer_state(self.opt, tensors, "dac.opt", meta["opt"])
        self.normalizer = Normalizer.from_dict(meta["normalizer"])
        self._xe = torch.as_tensor(self._norm(self.x_expert), device=self.device)
        self.rounds = int(meta["rounds"])
        self.metrics.update(meta.get("metrics", {}))


def train_dac(cfg, dataset, out_dir, env_fn=None, total_steps=None, resume=False, device="auto", callback=None,
              progress=True, variant=None, eval_env_fn=None, seed=None, n_envs=None) -> Path:
    """DAC with the same loop, SAC and checkpoints as SMILING; returns ``out_dir/policy.safetensors``."""
    from smiling_ros.methods.smiling.trainer import run

    return run("dac", cfg, dataset, out_dir, env_fn=env_fn, total_steps=total_steps, resume=resume, device=device,
               callback=callback, progress=progress, variant=variant, eval_env_fn=eval_env_fn, seed=seed,
               n_envs=n_envs)


def fit(cfg, dataset, *, out, env_fn=None, callback=None, **options):
    """DAC on the online loop, SB3-shaped: :func:`smiling_ros.methods.smiling.trainer.fit` with ``method='dac'``."""
    from smiling_ros.methods.smiling.trainer import fit as fit_online

    return fit_online(cfg, dataset, out=out, env_fn=env_fn, callback=callback, method="dac", **options)
