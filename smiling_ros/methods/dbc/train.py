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

Layout: :mod:`.config` (the ``dbc`` section), :mod:`.model` (the joint model and the loss), this
module (both stages on the shared loop :class:`~smiling_ros.learn.fit.Fit`, and :func:`fit`).

The result is an ``mlp_policy`` checkpoint (``eval``, the controller and BRIDGER's policy source
load it); the frozen diffusion model is saved beside it as ``NAME.dm.safetensors`` (kind
``dbc_diffusion``) so a later run can reuse it (``train-dbc --dm``). ``train-bc`` is this code with
``lambda_dm = 0`` (:mod:`smiling_ros.methods.bc`).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from smiling_ros.data.dataset import Dataset, Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.common import seed_everything
from smiling_ros.learn.diffusion import NoiseSchedule, ScoreNet, denoising_loss
from smiling_ros.learn.fit import Fit, Optim, TrainResult, random_batches
from smiling_ros.learn.logger import RunLogger, log_path
from smiling_ros.learn.plots import plot_rows
from smiling_ros.learn.policy import MlpActor, MlpPolicy
from smiling_ros.methods.dbc.config import DBCConfig
from smiling_ros.methods.dbc.model import JointDiffusion, dbc_losses

__all__ = ["DBCConfig", "DBCResult", "JointDiffusion", "dbc_losses", "fit", "train_dbc", "train_joint_diffusion"]

LOG_COLUMNS = ["step", "dm_loss", "loss", "bc", "agent", "expert", "dm", "lr"]
BC_COLUMNS = ["step", "loss", "lr"]


def train_joint_diffusion(obs: np.ndarray, act: np.ndarray, cfg: DBCConfig, gen: torch.Generator,
                          log: Optional[RunLogger] = None, progress: bool = True) -> JointDiffusion:
    """Stage 1: DDPM on z-scored [s, a] pairs. obs (N, ds), act (N, da) robot units."""
    x = np.concatenate([obs, act], 1)
    norm = Normalizer.fit(x)
    X = torch.as_tensor(norm.normalize(x))
    net = ScoreNet(X.shape[1], hidden=cfg.dm_hidden, layers=cfg.dm_layers, time_dim=32)
    sched = NoiseSchedule(cfg.T, cfg.schedule)
    it = random_batches(len(X), cfg.batch_size, gen)
    Fit(net, lambda idx: {"loss": denoising_loss(net, sched, X[idx])},
        Optim(cfg.dm_lr, schedule="cosine", min_lr=0.1), cfg.dm_steps, name="dbc stage 1 (joint diffusion)",
        logger=log, rename={"loss": "dm_loss"}, log_every=cfg.log_every, progress=progress).run(it)
    net.eval()
    for p in net.parameters():
        p.grad = None
        p.requires_grad_(False)
    return JointDiffusion(net, sched, norm, obs.shape[1], act.shape[1])


@dataclass
class DBCResult:
    policy: MlpPolicy
    dm: Optional[JointDiffusion]
    history: list[dict[str, float]]
    wall_s: float


def train_dbc(
    dataset: Dataset, cfg: DBCConfig, low: np.ndarray, high: np.ndarray, *, seed: int = 0,
    dm: Optional[JointDiffusion] = None, log_path: Optional[str | Path] = None, progress: bool = True,
    meta: Optional[dict[str, Any]] = None,
    on_log: Optional[Callable[[int, dict[str, float], MlpPolicy], Optional[bool]]] = None,
    weight_decay: float = 0.0,
) -> DBCResult:
    """Train DBC (or plain BC when ``cfg.lambda_dm == 0``) on ``dataset``'s (s, a) pairs.

    ``low``/``high`` (act_dim,) are the action limits the policy's tanh output is scaled to.
    ``dm`` reuses a trained stage-1 model instead of training one. ``log_path``: the CSV log (and a
    PNG of it beside). ``on_log(step, row, policy)`` is called at every stage-2 log row (False stops)."""
    t0 = time.time()
    act = dataset.require_actions("DBC")
    obs = dataset.obs
    if len(obs) < 2:
        raise UserError(f"{dataset.meta.get('path', 'dataset')}: DBC needs at least 2 (s, a) pairs, got {len(obs)}")
    gen = seed_everything(seed)
    log = RunLogger(log_path, LOG_COLUMNS if cfg.lambda_dm > 0 else BC_COLUMNS) if log_path else None
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
    S, A = torch.as_tensor(obs), torch.as_tensor(act)
    it = random_batches(len(S), cfg.batch_size, gen_batch)
    fit = Fit(actor, lambda idx: dbc_losses(policy, dm, S[idx], A[idx], act_norm, cfg, gen_dm),
              Optim(cfg.lr, optimizer="adamw", weight_decay=weight_decay, schedule="cosine", min_lr=0.1), cfg.steps,
              name="dbc stage 2 (policy)" if use_dm else "bc (policy)", logger=log, log_every=cfg.log_every,
              progress=progress, step_offset=cfg.dm_steps if use_dm else 0,
              on_log=None if on_log is None else (lambda step, row: on_log(step, row, policy)))
    history = fit.run(it)
    actor.eval()
    if log is not None:
        log.close()
        plot_rows(log.rows, ["dm_loss", "loss", "bc", "dm"], log.path.with_suffix(".png"),
                  "DBC" if use_dm else "BC", logy=True)
    return DBCResult(policy, dm, history, time.time() - t0)


def fit(cfg: Any, dataset: Dataset, *, out: str | Path, env_fn: Any = None, callback: Any = None,
        section: Optional[DBCConfig] = None, seed: Optional[int] = None,
        dm: Optional[str | Path | JointDiffusion] = None,
        progress: bool = True) -> TrainResult:
    """``train-dbc``: DBC (BC with ``lambda_dm = 0``) from ``cfg``'s ``dbc`` section (or ``section``)
    into the ``mlp_policy`` ``out`` (.safetensors), its log ``OUT.train.csv``/``.png`` and, when stage 1
    ran here, ``OUT.dm.safetensors``. ``dm`` reuses a stage-1 model (a path or one loaded).
    ``env_fn`` is unused (offline); ``callback({'step', 'metrics'})`` at every log row."""
    from smiling_ros.io.outputs import sibling
    from smiling_ros.learn.checkpoint import checkpoint_path
    from smiling_ros.learn.common import offline_inputs

    sec = section if section is not None else cfg.section(DBCConfig, "dbc")
    low, high, seed, task = offline_inputs(cfg, dataset, "train-dbc", seed)
    out = checkpoint_path(out)
    frozen = None
    if dm is not None and sec.lambda_dm > 0:
        frozen = dm if isinstance(dm, JointDiffusion) else JointDiffusion.load(dm, dataset.obs_dim, dataset.act_dim)
    on_log = None if callback is None else (lambda step, row, _policy: callback({"step": step, "metrics": row}))
    res = train_dbc(dataset, sec, low, high, seed=seed, dm=frozen, log_path=log_path(out), progress=progress,
                    meta={"task": task, "dataset": str(dataset.meta.get("path", "")), "config": cfg.to_dict()},
                    on_log=on_log)
    path = res.policy.save(out)
    files = {"policy": path, "log": log_path(out)}
    if res.dm is not None and frozen is None:
        files["dm"] = res.dm.save(sibling(out, ".dm.safetensors"), {"task": task})
    if callback is not None:
        callback({"step": sec.steps, "checkpoint": str(path)})
    last = res.history[-1] if res.history else {}
    return TrainResult(path, files, {"method": res.policy.meta["method"], "wall_s": res.wall_s, **last})
