"""Training BRIDGER (and its CVAE source) from a dataset with actions; evaluation per step count.

- :class:`BridgerConfig`: the ``bridger`` section of a task config (defaults below).
- :func:`training_arrays`: observation windows and action chunks from a dataset's episodes.
- :func:`make_source`: ``gaussian`` | ``cvae`` | ``heuristic`` | a policy checkpoint path.
- :func:`train_cvae`, :func:`train_bridger`: AdamW with cosine decay, EMA weights, tqdm, CSV log.
- :func:`evaluate_steps`: success / return in the task's env for each sampling step count.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from smiling_ros.config import positive
from smiling_ros.data.dataset import Dataset, Normalizer
from smiling_ros.errors import UserError
from smiling_ros.io.outputs import sibling
from smiling_ros.methods.bridger.interpolants import EPS_KINDS, KINDS, Interpolant
from smiling_ros.methods.bridger.nets import BridgerNet, Ema, check_activation, denoiser_loss, velocity_loss
from smiling_ros.methods.bridger.policy import BridgerPolicy
from smiling_ros.methods.bridger.sampler import CLOCKS
from smiling_ros.methods.bridger.sources import CVAE, CvaePolicy, GaussianSource, HeuristicSource, PolicySource, Source

SOURCES = ("gaussian", "cvae", "heuristic")


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
        if self.interpolant not in KINDS:
            raise UserError(f"{where}.interpolant: '{self.interpolant}' is not one of {', '.join(KINDS)}")
        if self.eps not in EPS_KINDS:
            raise UserError(f"{where}.eps: '{self.eps}' is not one of {', '.join(EPS_KINDS)}")
        if self.clock not in CLOCKS:
            raise UserError(f"{where}.clock: '{self.clock}' is not one of {', '.join(CLOCKS)}")
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
    from smiling_ros.config import build

    return build(BridgerConfig, cfg.bridger, f"{cfg.path or 'config'}: bridger")


# ------------------------------------------------------------------------------- data
def training_arrays(ds: Dataset, window: int, chunk: int) -> dict[str, np.ndarray]:
    """Per dataset row i (within its episode [s, e)):

    obs_win (N, window, D): obs[i-window+1 .. i], rows before s repeated from obs[s];
    act_chunk (N, chunk, A): act[i .. i+chunk-1], rows from e on repeated from act[e-1];
    obs (N, D): obs[i] (what sources condition on)."""
    act = ds.require_actions("BRIDGER")
    idx_o, idx_a = [], []
    for sl in ds.episode_slices():
        s, e = sl.start, sl.stop
        i = np.arange(s, e)
        idx_o.append(np.clip(i[:, None] + np.arange(-window + 1, 1)[None], s, e - 1))
        idx_a.append(np.clip(i[:, None] + np.arange(chunk)[None], s, e - 1))
    io, ia = np.concatenate(idx_o), np.concatenate(idx_a)
    return {"obs_win": ds.obs[io], "act_chunk": act[ia], "obs": ds.obs}


def action_bounds(cfg, ds: Dataset) -> tuple[np.ndarray, np.ndarray, str]:
    """Clamp bounds: config limits, else the env's action space, else the dataset's min/max."""
    A = ds.act_dim
    if cfg is not None and cfg.limits.action_low:
        low, high = np.asarray(cfg.limits.action_low, np.float32), np.asarray(cfg.limits.action_high, np.float32)
        if low.shape != (A,):
            raise UserError(f"{cfg.path}: limits.action_low has {low.size} elements, the dataset's actions {A}")
        return low, high, "config limits"
    if cfg is not None and cfg.task.env:
        from smiling_ros.envs import make_env_from_config

        env = make_env_from_config(cfg)
        try:
            sp = env.action_space
            if tuple(sp.shape) != (A,):
                raise UserError(f"{cfg.path}: env '{cfg.task.env}' has actions of shape {sp.shape}, the dataset ({A},)")
            return np.asarray(sp.low, np.float32), np.asarray(sp.high, np.float32), f"env {cfg.task.env}"
        finally:
            env.close()
    return ds.act.min(0).astype(np.float32), ds.act.max(0).astype(np.float32), "dataset min/max"


def make_source(spec: str, ds: Dataset, cfg=None, section: Optional[BridgerConfig] = None,
                act_norm: Optional[Normalizer] = None, seed: int = 0, out: Optional[Path] = None,
                progress: bool = True, device: str | torch.device = "cpu") -> Source:
    """Build the source named by ``spec``: gaussian, cvae (trained here, saved to ``out`` with
    suffix .cvae.safetensors when given), heuristic (the config's task), or a policy checkpoint."""
    act_norm = act_norm or ds.act_normalizer()
    section = section or BridgerConfig()
    if spec == "gaussian":
        return GaussianSource(ds.obs_dim, act_norm, seed)
    if spec == "cvae":
        pol = train_cvae(ds, section.cvae, seed=seed, progress=progress,
                         log_path=None if out is None else sibling(out, ".cvae.csv"))
        ckpt_path = None
        if out is not None:
            ckpt_path = pol.save(sibling(out, ".cvae.safetensors"), {"task": ds.meta.get("task", "")})
        from smiling_ros.learn.checkpoint import load_checkpoint

        if ckpt_path is not None:
            ckpt = load_checkpoint(ckpt_path)
        else:
            from smiling_ros.learn.checkpoint import FORMAT, Checkpoint, module_tensors

            ckpt = Checkpoint(module_tensors("cvae", pol.cvae),
                              {"format": FORMAT, "kind": "cvae", "obs_dim": pol.obs_dim, "act_dim": pol.act_dim,
                               "cvae": pol.cvae.hparams(), "obs_norm": pol.obs_norm.to_dict(),
                               "act_norm": pol.act_norm.to_dict()}, None)
        return PolicySource(pol, ckpt)
    if spec == "heuristic":
        if cfg is None or not cfg.task.env:
            raise UserError("--source heuristic: needs a config whose task has a heuristic controller")
        from smiling_ros.envs import heuristic_controller, make_env_from_config

        env = make_env_from_config(cfg)
        try:
            ctrl = heuristic_controller(env)
        finally:
            env.close()
        if ctrl is None:
            raise UserError(f"--source heuristic: task '{cfg.task.env}' has no heuristic controller "
                            f"(use gaussian, cvae or a policy checkpoint)")
        src = HeuristicSource.for_controller(ctrl)
    else:
        path = Path(spec)
        if not path.exists():
            raise UserError(f"--source: '{spec}' is neither gaussian, cvae, heuristic nor an existing checkpoint")
        from smiling_ros.learn.checkpoint import load_checkpoint
        from smiling_ros.learn.policy import POLICY_LOADERS, load_policy

        ckpt = load_checkpoint(path)
        if ckpt.kind == "bridger":
            raise UserError(f"{path}: a bridger checkpoint cannot be a source (use its source or a policy checkpoint)")
        ckpt.require(tuple(k for k in POLICY_LOADERS if k != "bridger"), obs_dim=ds.obs_dim, act_dim=ds.act_dim)
        src = PolicySource(load_policy(path, device=device, obs_dim=ds.obs_dim, act_dim=ds.act_dim), ckpt)
        src.seed(seed)
    if (src.obs_dim, src.act_dim) != (ds.obs_dim, ds.act_dim):
        raise UserError(f"source '{spec}': obs/act dims ({src.obs_dim}, {src.act_dim}) differ from the dataset's "
                        f"({ds.obs_dim}, {ds.act_dim})")
    return src


# ------------------------------------------------------------------------------- logging
class CsvLog:
    """Rows of scalars appended to a CSV file (header from the first row), flushed per row."""

    def __init__(self, path: Optional[Path]):
        self.path, self._f, self._w = path, None, None
        self.rows: list[dict[str, float]] = []

    def write(self, row: dict[str, float]) -> None:
        self.rows.append(row)
        if self.path is None:
            return
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "w", newline="")
            self._w = csv.DictWriter(self._f, fieldnames=list(row))
            self._w.writeheader()
        self._w.writerow(row)
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


def plot_losses(rows: list[dict[str, float]], keys: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [r["step"] for r in rows]
    for k in keys:
        ax.plot(steps, [max(r[k], 1e-8) for r in rows], label=k)
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _lr_at(step: int, total: int, lr: float, warmup: int = 200) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# ------------------------------------------------------------------------------- CVAE
def train_cvae(ds: Dataset, cc: CvaeConfig, seed: int = 0, progress: bool = True,
               log_path: Optional[Path] = None, device: str | torch.device = "cpu") -> CvaePolicy:
    """Fit a CVAE to (obs, act): loss 10 * MSE + beta * KL, beta ramped 0 -> cc.beta."""
    from tqdm.auto import tqdm

    act = ds.require_actions("the CVAE source")
    obs_norm, act_norm = ds.obs_normalizer(), ds.act_normalizer()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    obs_t = torch.as_tensor(obs_norm.normalize(ds.obs), device=dev)
    A = torch.as_tensor(act_norm.normalize(act), device=dev)
    model = CVAE(ds.obs_dim, ds.act_dim, cc.hidden, cc.latent).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cc.lr, weight_decay=1e-4)
    log = CsvLog(log_path)
    bar = tqdm(range(cc.train_steps), desc="cvae", disable=not progress, mininterval=1.0)
    acc = {"mse": 0.0, "kl": 0.0, "n": 0}
    t0 = time.time()
    for step in bar:
        idx = torch.as_tensor(rng.integers(0, len(obs_t), cc.batch_size), device=dev)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cc.train_steps, cc.lr)
        beta = cc.beta * min(1.0, step / max(1.0, cc.beta_warmup * cc.train_steps))
        rec, mu, logvar = model(obs_t[idx], A[idx])
        mse = ((rec - A[idx]) ** 2).mean()
        kl = CVAE.kl(mu, logvar).mean()
        loss = 10.0 * mse + beta * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc["mse"] += float(mse.detach())
        acc["kl"] += float(kl.detach())
        acc["n"] += 1
        if (step + 1) % 100 == 0 or step + 1 == cc.train_steps:
            row = {"step": step + 1, "mse": acc["mse"] / acc["n"], "kl": acc["kl"] / acc["n"], "beta": beta,
                   "lr": opt.param_groups[0]["lr"], "time_s": time.time() - t0}
            log.write(row)
            bar.set_postfix(mse=f"{row['mse']:.4f}", kl=f"{row['kl']:.2f}")
            acc = {"mse": 0.0, "kl": 0.0, "n": 0}
    log.close()
    if log_path is not None:
        plot_losses(log.rows, ["mse", "kl"], log_path.with_suffix(".png"), "CVAE source")
    return CvaePolicy(model.cpu(), obs_norm, act_norm, {"task": ds.meta.get("task", ""), "cvae_config": asdict(cc)},
                      seed=seed)


# ------------------------------------------------------------------------------- BRIDGER
def _source_bank(source: Source, obs: np.ndarray, act_norm: Normalizer, n: int) -> Optional[np.ndarray]:
    """(K, N, A) normalised source samples per row (K = 1 for deterministic sources); None for
    the Gaussian source (drawn fresh every step)."""
    if isinstance(source, GaussianSource):
        return None
    k = 1 if source.deterministic else n
    out = []
    for _ in range(k):
        parts = [source.sample(obs[i:i + 4096]) for i in range(0, len(obs), 4096)]
        out.append(act_norm.normalize(np.concatenate(parts)).astype(np.float32))
    bank = np.stack(out)
    if not np.isfinite(bank).all():
        raise UserError(f"source '{source.name}' returned non-finite actions on the dataset's observations")
    return bank


def train_bridger(ds: Dataset, source: Source, sec: BridgerConfig, low: np.ndarray, high: np.ndarray,
                  seed: int = 0, progress: bool = True, log_path: Optional[Path] = None,
                  device: str | torch.device = "cpu", meta: Optional[dict[str, Any]] = None,
                  callback: Optional[Callable[[int, dict], None]] = None) -> BridgerPolicy:
    """Train the velocity/denoiser net from ``source`` to the dataset's actions.

    Per batch: t ~ U(t_min, 1 - t_min), z ~ N(0, I), x_t = I(t, x0, x1) + gamma(t) z; loss =
    mean over the batch of L_v + L_s (each summed over action dimensions)."""
    from tqdm.auto import tqdm

    arrays = training_arrays(ds, sec.obs_window, sec.chunk)
    obs_norm, act_norm = ds.obs_normalizer(), ds.act_normalizer()
    interp = sec.interpolant_obj()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    N, W, D = arrays["obs_win"].shape
    C, A = sec.chunk, ds.act_dim
    cond_all = torch.as_tensor(obs_norm.normalize(arrays["obs_win"]).reshape(N, W * D), device=dev)
    x1_all = torch.as_tensor(act_norm.normalize(arrays["act_chunk"]).reshape(N, C * A), device=dev)
    bank = _source_bank(source, arrays["obs"], act_norm, sec.source_samples)
    bank_t = None if bank is None else torch.as_tensor(bank, device=dev)

    net = BridgerNet(C * A, W * D, sec.hidden, sec.activation).to(dev)
    ema = Ema(net, sec.ema_decay)
    opt = torch.optim.AdamW(net.parameters(), lr=sec.lr, weight_decay=sec.weight_decay)
    log = CsvLog(log_path)
    keys = ("loss", "loss_v", "loss_s", "mse_v", "mse_s")
    acc = dict.fromkeys(keys, 0.0)
    n_acc = 0
    bar = tqdm(range(sec.train_steps), desc=f"bridger[{source.name}]", disable=not progress, mininterval=1.0)
    t0 = time.time()
    for step in bar:
        idx_np = rng.integers(0, N, sec.batch_size)
        idx = torch.as_tensor(idx_np, device=dev)
        x1, cond = x1_all[idx], cond_all[idx]
        if bank_t is None:
            x0 = torch.randn(sec.batch_size, C * A, device=dev)
        else:
            k = torch.as_tensor(rng.integers(0, bank_t.shape[0], sec.batch_size), device=dev)
            x0 = bank_t[k, idx]
            if C > 1:
                x0 = x0.repeat(1, C)
        t = interp.t_min + (1 - 2 * interp.t_min) * torch.rand(sec.batch_size, device=dev)
        z = torch.randn_like(x1)
        xt = interp.interpolate(x0, x1, t, z)
        dI = interp.dmean(x0, x1, t)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, sec.train_steps, sec.lr)
        v, s = net(xt, t, cond)
        lv, ls = velocity_loss(v, dI).mean(), denoiser_loss(s, z).mean()
        loss = lv + ls
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(net)
        with torch.no_grad():
            acc["loss"] += float(loss)
            acc["loss_v"] += float(lv)
            acc["loss_s"] += float(ls)
            acc["mse_v"] += float(((v - dI) ** 2).sum(-1).mean())
            acc["mse_s"] += float(((s - z) ** 2).sum(-1).mean())
        n_acc += 1
        if (step + 1) % sec.log_every == 0 or step + 1 == sec.train_steps:
            row = {"step": step + 1, **{k: acc[k] / n_acc for k in keys}, "lr": opt.param_groups[0]["lr"],
                   "time_s": time.time() - t0}
            if not math.isfinite(row["loss"]):
                raise UserError(f"bridger training diverged (loss {row['loss']}) at step {step + 1}; lower bridger.lr")
            log.write(row)
            bar.set_postfix(mse_v=f"{row['mse_v']:.4f}", mse_s=f"{row['mse_s']:.3f}")
            if callback is not None:
                callback(step + 1, row)
            acc = dict.fromkeys(keys, 0.0)
            n_acc = 0
    log.close()
    if log_path is not None:
        plot_losses(log.rows, ["mse_v", "mse_s"], log_path.with_suffix(".png"),
                    f"BRIDGER ({source.name} source): |v - dI/dt|^2, |s - z|^2")
    policy_meta = {"task": ds.meta.get("task", ""), "train": {k: v for k, v in asdict(sec).items()},
                   "dataset": {"path": ds.meta.get("path", ""), "episodes": ds.num_episodes, "steps": len(ds.obs)},
                   **(meta or {})}
    return BridgerPolicy(ema.module.cpu(), interp, source, obs_norm, act_norm, low, high, sec.steps, sec.obs_window,
                         sec.chunk, sec.execute, sec.clock, sec.final_noise, policy_meta, "cpu", seed)


# ------------------------------------------------------------------------------- evaluation
def evaluate_steps(policy: BridgerPolicy, env_fn: Callable[[], Any], steps_list: list[int], episodes: int,
                   seed: int = 0, side_fn: Optional[Callable[[np.ndarray], Optional[str]]] = None,
                   progress: bool = False) -> list[dict[str, Any]]:
    """For each step count: mean/std return, success rate, and (with ``side_fn``) the count of
    episodes per mode (e.g. ArmReach's passing side). Episodes i use env seed ``seed + i`` for
    every step count (common random numbers across step counts and sources)."""
    from tqdm.auto import tqdm

    from smiling_ros.data.evaluation import run_episodes

    env = env_fn()
    out = []
    keep = policy.steps
    try:
        for n in tqdm(steps_list, desc="eval steps", disable=not progress):
            policy.steps = int(n)
            policy.seed(seed)
            eps = run_episodes(policy, env, episodes, seed, record=side_fn is not None)
            rets = [e["return"] for e in eps]
            succ = [e["success"] for e in eps]
            row: dict[str, Any] = {"steps": int(n), "episodes": int(episodes), "mean_return": float(np.mean(rets)),
                                   "std_return": float(np.std(rets)),
                                   "success_rate": None if any(s is None for s in succ) else float(np.mean(succ))}
            if side_fn is not None:
                sides = [side_fn(e["obs"]) for e in eps]
                row["sides"] = {k: int(sum(s == k for s in sides)) for k in ("left", "right")}
                row["sides"]["none"] = int(sum(s is None for s in sides))
            out.append(row)
    finally:
        policy.steps = keep
        env.close()
    return out
