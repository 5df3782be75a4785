"""DBC: Diffusion Model-Augmented Behavioural Cloning (Chen et al., ICML 2024).

Stage 1 fits a DDPM to the joint distribution of expert pairs x0 = [s, a] (both z-scored with
:class:`~smiling_ros.data.dataset.Normalizer`, T = 1000 by default) and freezes it. Stage 2 trains a
deterministic MLP policy pi with

    L = L_BC + lambda * L_DM,
    L_BC    = mean ||a_z - pi(s)_z||^2                       (z-scored action units)
    L_agent = mean_b ||eps - eps_phi(x_t([s, pi(s)]), t)||^2
    L_expert= mean_b ||eps - eps_phi(x_t([s, a]),     t)||^2
    L_DM    = max(L_agent - L_expert, 0)     (``normalize_dm``; else L_agent alone, the paper's ablation)

where the same draw of (t, eps) is used for the agent and the expert term of a batch, and gradients
flow through the frozen eps_phi into pi(s). BC (a forward-KL, mode-covering objective) is thus
complemented by the diffusion term (reverse-KL-like, mode-seeking): actions that the joint model finds
unlikely next to s are pushed back towards the expert manifold. ``lambda_dm = 0`` is plain BC.
With ``state_noise`` > 0 both diffusion terms are taken at s jittered by that many data stds (the
recorded action standing in for the expert's there), so the term also shapes pi between the recorded
states, where BC has no target; 0 is the published loss.

The result is an ``mlp_policy`` checkpoint (``eval``, the controller and BRIDGER's policy source
load it); the frozen diffusion model is saved beside it as ``NAME.dm.safetensors`` (kind
``dbc_diffusion``) so a later run can reuse it (``train-dbc --dm``).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from smiling_ros.config import positive
from smiling_ros.data.dataset import Dataset, Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import load_checkpoint, load_module, module_tensors, save_checkpoint
from smiling_ros.learn.common import TrainLog, batches, seed_everything
from smiling_ros.learn.diffusion import NoiseSchedule, ScoreNet, denoising_loss, per_sample_denoising_error
from smiling_ros.learn.policy import MlpActor, MlpPolicy


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
        if self.schedule not in ("linear", "cosine"):
            raise UserError(f"{where}.schedule: 'linear' or 'cosine', got '{self.schedule}'")
        if not self.hidden:
            raise UserError(f"{where}.hidden: at least one hidden layer")


@dataclass
class JointDiffusion:
    """The frozen stage-1 model: eps_phi over z-scored [s, a]."""

    net: ScoreNet
    schedule: NoiseSchedule
    norm: Normalizer  # over the concatenation [s, a], (obs_dim + act_dim,)
    obs_dim: int
    act_dim: int

    def save(self, path: str | Path, meta: Optional[dict[str, Any]] = None) -> Path:
        m = {
            "kind": "dbc_diffusion", "obs_dim": self.obs_dim, "act_dim": self.act_dim,
            "net": self.net.hparams(), "T": self.schedule.T, "schedule": self.schedule.kind,
            "norm": self.norm.to_dict(), **(meta or {}),
        }
        return save_checkpoint(path, module_tensors("net", self.net), m)

    @classmethod
    def load(cls, path: str | Path, obs_dim: int, act_dim: int) -> "JointDiffusion":
        ck = load_checkpoint(path).require("dbc_diffusion", obs_dim=obs_dim, act_dim=act_dim)
        m = ck.meta
        try:
            net = load_module(ck, "net", lambda: ScoreNet(**m["net"]), "dbc diffusion net")
            return cls(net, NoiseSchedule(int(m["T"]), m["schedule"]), Normalizer.from_dict(m["norm"]), obs_dim, act_dim)
        except (KeyError, RuntimeError, TypeError) as exc:
            raise UserError(f"{path}: inconsistent dbc_diffusion checkpoint ({str(exc).splitlines()[0]})") from None


def train_joint_diffusion(
    obs: np.ndarray, act: np.ndarray, cfg: DBCConfig, gen: torch.Generator, log: Optional[TrainLog] = None,
    progress: bool = True,
) -> JointDiffusion:
    """Stage 1: DDPM on z-scored [s, a] pairs. obs (N, ds), act (N, da) robot units."""
    x = np.concatenate([obs, act], 1)
    norm = Normalizer.fit(x)
    X = torch.as_tensor(norm.normalize(x))
    net = ScoreNet(X.shape[1], hidden=cfg.dm_hidden, layers=cfg.dm_layers, time_dim=32)
    sched = NoiseSchedule(cfg.T, cfg.schedule)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.dm_lr)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(cfg.dm_steps, 1), eta_min=cfg.dm_lr * 0.1)
    it = batches(len(X), min(cfg.batch_size, len(X)), gen)
    bar = tqdm(range(cfg.dm_steps), desc="dbc stage 1 (joint diffusion)", disable=not progress, mininterval=1.0)
    ema = None
    for step in bar:
        loss = denoising_loss(net, sched, X[next(it)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lr_sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % cfg.log_every == 0 or step == cfg.dm_steps - 1:
            bar.set_postfix(loss=f"{ema:.4f}")
            if log is not None:
                log.add(step, dm_loss=ema)
    net.eval()
    for p in net.parameters():
        p.grad = None
        p.requires_grad_(False)
    return JointDiffusion(net, sched, norm, obs.shape[1], act.shape[1])


def dbc_losses(
    policy: MlpPolicy, dm: Optional[JointDiffusion], s: torch.Tensor, a: torch.Tensor, act_norm: Normalizer,
    cfg: DBCConfig, gen: Optional[torch.Generator] = None,
) -> dict[str, torch.Tensor]:
    """The stage-2 loss terms for one batch. s (B, ds), a (B, da) robot units.

    Returns ``loss`` (differentiable w.r.t. the policy), ``bc``, ``agent``, ``expert``, ``dm``."""
    a_pi = policy.forward(s)
    bc = ((act_norm.normalize(a_pi) - act_norm.normalize(a)) ** 2).mean()
    out = {"bc": bc}
    if dm is None or cfg.lambda_dm == 0:
        out.update(loss=bc, agent=torch.zeros(()), expert=torch.zeros(()), dm=torch.zeros(()))
        return out
    if cfg.state_noise > 0:  # both terms at the jittered state: pi's action there vs the recorded one
        s = s + cfg.state_noise * torch.as_tensor(dm.norm.std[: s.shape[1]], dtype=s.dtype) * torch.randn(
            s.shape, generator=gen)
        a_pi = policy.forward(s)
    x_agent = dm.norm.normalize(torch.cat([s, a_pi], 1))
    x_expert = dm.norm.normalize(torch.cat([s, a], 1))
    # One draw of (t, eps) shared by the agent and the expert term: their difference then measures
    # only how much worse pi's action denoises than the expert's, not sampling noise.
    t = torch.randint(0, dm.schedule.T, (s.shape[0],), generator=gen)
    eps = torch.randn(x_agent.shape, generator=gen)
    agent = per_sample_denoising_error(dm.net, dm.schedule, x_agent, t, eps).mean()
    with torch.no_grad():
        expert = per_sample_denoising_error(dm.net, dm.schedule, x_expert, t, eps).mean()
    ldm = (agent - expert).clamp(min=0) if cfg.normalize_dm else agent
    out.update(loss=bc + cfg.lambda_dm * ldm, agent=agent.detach(), expert=expert, dm=ldm.detach())
    return out


@dataclass
class DBCResult:
    policy: MlpPolicy
    dm: Optional[JointDiffusion]
    history: list[dict[str, float]]
    wall_s: float


def train_dbc(
    dataset: Dataset, cfg: DBCConfig, low: np.ndarray, high: np.ndarray, *, seed: int = 0,
    dm: Optional[JointDiffusion] = None, log_prefix: Optional[str | Path] = None, progress: bool = True,
    meta: Optional[dict[str, Any]] = None,
) -> DBCResult:
    """Train DBC (or plain BC when ``cfg.lambda_dm == 0``) on ``dataset``'s (s, a) pairs.

    ``low``/``high`` (act_dim,) are the action limits the policy's tanh output is scaled to.
    ``dm`` reuses a trained stage-1 model instead of training one."""
    t0 = time.time()
    act = dataset.require_actions("DBC")
    obs = dataset.obs
    if len(obs) < 2:
        raise UserError(f"{dataset.meta.get('path', 'dataset')}: DBC needs at least 2 (s, a) pairs, got {len(obs)}")
    gen = seed_everything(seed)
    log = TrainLog(log_prefix, ["dm_loss", "loss", "bc", "agent", "expert", "dm"]) if log_prefix else None
    use_dm = cfg.lambda_dm > 0
    if use_dm and dm is None:
        dm = train_joint_diffusion(obs, act, cfg, gen, log, progress)
    if not use_dm:
        dm = None
    obs_norm = dataset.obs_normalizer()
    act_norm = Normalizer.fit(act)
    # Stage 2 starts from the same state whatever lambda is and whether stage 1 ran here: the policy's
    # initial weights and the batch order depend on the seed alone, and the diffusion term's (t, eps)
    # draws come from a generator of their own. A DBC run and its BC ablation (lambda = 0) with the same
    # seed then differ only by the L_DM term (a paired comparison).
    torch.manual_seed(seed)
    gen_batch = torch.Generator().manual_seed(seed)
    gen_dm = torch.Generator().manual_seed(seed + 104729)
    actor = MlpActor(dataset.obs_dim, dataset.act_dim, cfg.hidden, cfg.activation)
    policy = MlpPolicy(actor, obs_norm, low, high, meta={
        "method": "dbc" if use_dm else "bc", "dbc": dataclasses.asdict(cfg), "seed": seed, **(meta or {}),
    })
    actor.train()
    S, A = torch.as_tensor(obs), torch.as_tensor(act)
    opt = torch.optim.Adam(actor.parameters(), lr=cfg.lr)
    lr_sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps, eta_min=cfg.lr * 0.1)
    it = batches(len(S), min(cfg.batch_size, len(S)), gen_batch)
    history: list[dict[str, float]] = []
    acc: dict[str, float] = {}
    n = 0
    bar = tqdm(range(cfg.steps), desc="dbc stage 2 (policy)" if use_dm else "bc (policy)", disable=not progress,
               mininterval=1.0)
    for step in bar:
        idx = next(it)
        terms = dbc_losses(policy, dm, S[idx], A[idx], act_norm, cfg, gen_dm)
        opt.zero_grad(set_to_none=True)
        terms["loss"].backward()
        opt.step()
        lr_sched.step()
        for k, v in terms.items():
            acc[k] = acc.get(k, 0.0) + float(v.detach())
        n += 1
        if (step + 1) % cfg.log_every == 0 or step == cfg.steps - 1:
            row = {k: v / n for k, v in acc.items()}
            history.append({"step": step + 1, **row})
            if log is not None:
                log.add(cfg.dm_steps + step + 1 if use_dm else step + 1, **row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", bc=f"{row['bc']:.4f}", dm=f"{row['dm']:.4f}")
            acc, n = {}, 0
    actor.eval()
    if log is not None:
        log.close("DBC" if use_dm else "BC")
    return DBCResult(policy, dm, history, time.time() - t0)
