"""Training BRIDGER (and its CVAE source) from a dataset with actions; evaluation per step count.

- :class:`~smiling_ros.methods.bridger.config.BridgerConfig`: the ``bridger`` section (in config.py).
- :func:`training_arrays`: observation windows and action chunks from a dataset's episodes.
- :func:`make_source`: ``gaussian`` | ``cvae`` | ``heuristic`` | a policy checkpoint path.
- :func:`train_cvae`, :func:`train_bridger`: on the shared loop (:mod:`smiling_ros.learn.fit`).
- :func:`evaluate_steps`: success / return in the task's env for each sampling step count.
"""
from __future__ import annotations

import typing
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

from smiling_ros.data.dataset import Dataset, Normalizer
from smiling_ros.errors import UserError
from smiling_ros.io.outputs import sibling
from smiling_ros.learn.bounds import action_bounds
from smiling_ros.learn.fit import Fit, Optim, TrainResult
from smiling_ros.learn.logger import RunLogger
from smiling_ros.learn.plots import plot_rows
from smiling_ros.methods.bridger.config import BridgerConfig, CvaeConfig, load_section
from smiling_ros.methods.bridger.nets import BridgerNet, denoiser_loss, velocity_loss
from smiling_ros.methods.bridger.policy import BridgerPolicy
from smiling_ros.methods.bridger.sources import CVAE, CvaePolicy, GaussianSource, HeuristicSource, PolicySource, Source

__all__ = ["BridgerConfig", "CvaeConfig", "action_bounds", "evaluate_steps", "load_section", "make_source",
           "fit", "train_bridger", "train_cvae", "training_arrays"]

SOURCES = ("gaussian", "cvae", "heuristic")


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
        src: Source = HeuristicSource.for_controller(ctrl)
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
        policy_src = PolicySource(load_policy(path, device=device, obs_dim=ds.obs_dim, act_dim=ds.act_dim), ckpt)
        policy_src.seed(seed)
        src = policy_src
    if (src.obs_dim, src.act_dim) != (ds.obs_dim, ds.act_dim):
        raise UserError(f"source '{spec}': obs/act dims ({src.obs_dim}, {src.act_dim}) differ from the dataset's "
                        f"({ds.obs_dim}, {ds.act_dim})")
    return src


# ------------------------------------------------------------------------------- CVAE
def train_cvae(ds: Dataset, cc: CvaeConfig, seed: int = 0, progress: bool = True,
               log_path: Optional[Path] = None, device: str | torch.device = "cpu") -> CvaePolicy:
    """Fit a CVAE to (obs, act): loss 10 * MSE + beta * KL, beta ramped 0 -> cc.beta."""
    act = ds.require_actions("the CVAE source")
    obs_norm, act_norm = ds.obs_normalizer(), ds.act_normalizer()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(device)
    obs_t = torch.as_tensor(obs_norm.normalize(ds.obs), device=dev)
    A = torch.as_tensor(act_norm.normalize(act), device=dev)
    model = CVAE(ds.obs_dim, ds.act_dim, cc.hidden, cc.latent).to(dev)

    def compute_loss(idx: torch.Tensor) -> dict[str, torch.Tensor]:
        beta = cc.beta * min(1.0, trainer.step_count / max(1.0, cc.beta_warmup * cc.train_steps))
        rec, mu, logvar = model(obs_t[idx], A[idx])
        mse = ((rec - A[idx]) ** 2).mean()
        kl = CVAE.kl(mu, logvar).mean()
        return {"loss": 10.0 * mse + beta * kl, "mse": mse, "kl": kl, "beta": torch.tensor(beta)}

    log = RunLogger(log_path, ["step", "mse", "kl", "beta", "lr"]) if log_path is not None else None
    trainer = Fit(model, compute_loss, Optim(cc.lr, "adamw", weight_decay=1e-4, schedule="warmup_cosine", warmup=200),
                  cc.train_steps, name="cvae", logger=log, progress=progress)
    trainer.run(lambda: torch.as_tensor(rng.integers(0, len(obs_t), cc.batch_size), device=dev))
    if log is not None and log_path is not None:
        log.close()
        plot_rows(log.rows, ["mse", "kl"], log_path.with_suffix(".png"), "CVAE source", logy=True)
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
    mean over the batch of L_v + L_s (each summed over action dimensions). AdamW, linear warm-up
    then cosine decay, EMA weights (the ones deployed)."""
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

    def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(rng.integers(0, N, sec.batch_size), device=dev)
        if bank_t is None:
            x0 = torch.randn(sec.batch_size, C * A, device=dev)
        else:
            k = torch.as_tensor(rng.integers(0, bank_t.shape[0], sec.batch_size), device=dev)
            x0 = bank_t[k, idx]
            if C > 1:
                x0 = x0.repeat(1, C)
        return x0, x1_all[idx], cond_all[idx]

    def compute_loss(b: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        x0, x1, cond = b
        t = interp.t_min + (1 - 2 * interp.t_min) * torch.rand(sec.batch_size, device=dev)
        z = torch.randn_like(x1)
        xt = interp.interpolate(x0, x1, t, z)
        dI = interp.dmean(x0, x1, t)
        v, s = net(xt, t, cond)
        lv, ls = velocity_loss(v, dI).mean(), denoiser_loss(s, z).mean()
        with torch.no_grad():
            mse_v, mse_s = ((v - dI) ** 2).sum(-1).mean(), ((s - z) ** 2).sum(-1).mean()
        return {"loss": lv + ls, "loss_v": lv, "loss_s": ls, "mse_v": mse_v, "mse_s": mse_s}

    log = RunLogger(log_path, ["step", "loss", "loss_v", "loss_s", "mse_v", "mse_s", "lr"]) if log_path else None
    on_log = None if callback is None else (lambda step, row: callback(step, row))  # noqa: E731
    trainer = Fit(net, compute_loss, Optim(sec.lr, "adamw", weight_decay=sec.weight_decay, schedule="warmup_cosine",
                                           warmup=200, ema_decay=sec.ema_decay),
                  sec.train_steps, name=f"bridger[{source.name}]", logger=log, log_every=sec.log_every,
                  progress=progress, on_log=on_log)
    trainer.run(batch)
    if log is not None and log_path is not None:
        log.close()
        plot_rows(log.rows, ["mse_v", "mse_s"], log_path.with_suffix(".png"),
                  f"BRIDGER ({source.name} source): |v - dI/dt|^2, |s - z|^2", logy=True)
    policy_meta = {"task": ds.meta.get("task", ""), "train": dict(asdict(sec)),
                   "dataset": {"path": ds.meta.get("path", ""), "episodes": ds.num_episodes, "steps": len(ds.obs)},
                   **(meta or {})}
    deployed = typing.cast(BridgerNet, trainer.averaged)
    return BridgerPolicy(deployed.cpu(), interp, source, obs_norm, act_norm, low, high, sec.steps,
                         sec.obs_window, sec.chunk, sec.execute, sec.clock, sec.final_noise, policy_meta, "cpu", seed)


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


def fit(cfg: Any, dataset: Dataset, *, out: str | Path, env_fn: Optional[Callable[[], Any]] = None,
        callback: Optional[Callable[[dict], Any]] = None, section: Optional[BridgerConfig] = None,
        source: Optional[str | Source] = None, seed: Optional[int] = None, device: str | torch.device = "cpu",
        eval_episodes: int = 0, progress: bool = True) -> TrainResult:
    """``train-bridger``: the BRIDGER checkpoint ``out`` (self-contained: the source is embedded), its log
    ``OUT.train.csv``/``.png`` and, with ``eval_episodes`` and a simulator (``env_fn``, else the config's
    task), ``OUT.eval.json`` (success / return per step count of ``bridger.eval_steps``). ``source``: a
    spec (gaussian | cvae | heuristic | checkpoint path; default ``bridger.source``) or a built source;
    ``cvae`` also writes ``OUT.cvae.safetensors``. ``callback({'step', 'metrics'})`` at every log row."""
    import json

    from smiling_ros.io.outputs import atomic_write_text
    from smiling_ros.learn.checkpoint import checkpoint_path
    from smiling_ros.learn.logger import log_path

    sec = section if section is not None else load_section(cfg)
    dataset.require_actions("train-bridger")
    low, high, bounds_from = action_bounds(cfg, dataset)
    out = checkpoint_path(out)
    seed = int(cfg.seed if seed is None else seed)
    spec = source if source is not None else sec.source
    src = make_source(spec, dataset, cfg, sec, seed=seed, out=out, progress=progress, device=device) \
        if isinstance(spec, str) else spec
    on_log = None if callback is None else (lambda step, row: callback({"step": step, "metrics": row}))
    policy = train_bridger(dataset, src, sec, low, high, seed=seed, progress=progress, log_path=log_path(out),
                           device=device, callback=on_log,
                           meta={"task": dataset.meta.get("task") or cfg.task.env, "config": cfg.to_dict(),
                                 "source_spec": spec if isinstance(spec, str) else src.name})
    path = policy.save(out)
    files = {"policy": path, "log": log_path(out)}
    summary: dict[str, Any] = {"source": src.name, "bounds_from": bounds_from, "eval": None}
    if eval_episodes and (env_fn is not None or cfg.task.env):
        from smiling_ros.envs import ARM_REACH, make_env_from_config, passing_side

        side_fn = passing_side if cfg.task.env == ARM_REACH else None
        rows = evaluate_steps(policy, env_fn or (lambda: make_env_from_config(cfg)), list(sec.eval_steps),
                              eval_episodes, seed=seed + 10_000, side_fn=side_fn, progress=progress)
        files["eval"] = sibling(out, ".eval.json")
        atomic_write_text(files["eval"], json.dumps({"checkpoint": str(path), "source": src.name, "results": rows},
                                                    indent=1))
        summary["eval"] = rows
    if callback is not None:
        callback({"step": sec.train_steps, "checkpoint": str(path)})
    return TrainResult(path, files, summary)
