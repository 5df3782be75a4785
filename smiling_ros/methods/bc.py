"""Behavioural-cloning baseline: state-action demos -> deterministic MLP policy (``mlp_policy``).

Observations are z-scored with the demo statistics; actions are mapped to [-1, 1] with the
env's action bounds (``limits`` of the config when there is no env) and regressed with MSE on
the tanh output of :class:`~smiling_ros.learn.policy.MlpActor`. Options: ``smiling.bc``.

Python API: ``train_bc(cfg, dataset, out_dir, env_fn=None, steps=None, device='auto',
callback=None, progress=True, seed=None) -> Path`` (``out_dir/policy.safetensors``); the
callback receives ``{'step', 'metrics'}`` at each evaluation and ``{'step', 'checkpoint'}`` at the end.
Run directory: policy.safetensors, train.csv (step, loss), eval.csv, learning_curve.png, summary.json.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import atomic_write_text


def train_bc(cfg, dataset, out_dir, env_fn=None, steps: Optional[int] = None, device: str = "auto", callback=None,
             progress: bool = True, seed: Optional[int] = None, overwrite: bool = False) -> Path:
    from smiling_ros.data.dataset import Normalizer
    from smiling_ros.data.evaluation import evaluate, expert_spec, reference_returns
    from smiling_ros.learn.device import select_device
    from smiling_ros.learn.policy import MlpActor, MlpPolicy
    from smiling_ros.methods.smiling.config import expert_section, smiling_section
    from smiling_ros.methods.smiling.trainer import EVAL_COLUMNS, CsvLog, dataset_fingerprint, default_env_fn

    opts = smiling_section(cfg)
    bc = opts.bc
    seed = int(seed if seed is not None else (opts.seed if opts.seed is not None else cfg.seed))
    steps = int(steps if steps is not None else bc.steps)
    if steps < 1:
        raise UserError(f"--steps: must be >= 1, got {steps}")
    dev = select_device(device)
    torch.manual_seed(seed)
    task = cfg.task.env or "robot"
    act = dataset.require_actions("BC")
    name = dataset.meta.get("path", "dataset")
    env = None
    if cfg.task.env or env_fn is not None:
        env_fn = env_fn or default_env_fn(cfg)
        env = env_fn()
        low, high = env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)
        obs_dim = int(np.prod(env.observation_space.shape))
        if dataset.obs_dim != obs_dim:
            raise UserError(f"{name}: demonstrations have {dataset.obs_dim}-dim observations but '{task}' has {obs_dim} "
                            f"(demos of another task?)")
    elif cfg.limits.action_low:
        low, high = np.asarray(cfg.limits.action_low, np.float32), np.asarray(cfg.limits.action_high, np.float32)
    else:
        raise UserError(f"{cfg.path}: BC without a simulator needs limits.action_low/action_high")
    if dataset.act_dim != len(low):
        raise UserError(f"{name}: demonstrations have {dataset.act_dim}-dim actions but '{task}' has {len(low)}")
    if len(dataset.obs) < 2:
        raise UserError(f"{name}: needs at least 2 demonstration pairs for BC")
    out = Path(out_dir)
    if (out / "policy.safetensors").exists() and not overwrite:
        raise UserError(f"{out}: already holds a trained policy; pass --overwrite to replace it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for f in ("train.csv", "eval.csv"):  # logs of an interrupted earlier attempt
        if (out / f).exists():
            os.replace(out / f, out / f"{f}.prev")

    norm = Normalizer.fit(dataset.obs)
    obs_n = torch.as_tensor(norm.normalize(dataset.obs), device=dev)
    a_unit = torch.as_tensor(np.clip(2 * (act - low) / (high - low) - 1, -1, 1), device=dev)
    actor = MlpActor(dataset.obs_dim, len(low), bc.hidden, "relu").to(dev)
    opt = torch.optim.AdamW(actor.parameters(), lr=bc.lr, weight_decay=bc.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    meta = {"task": task, "method": "bc", "seed": seed, "config": cfg.to_dict(),
            "dataset": {"path": dataset.meta.get("path"), "fingerprint": dataset_fingerprint(dataset),
                        "states": int(len(dataset.obs))}}

    def policy(step: int) -> MlpPolicy:
        import copy

        return MlpPolicy(copy.deepcopy(actor).cpu(), norm, low, high, {**meta, "step": step})

    references = None
    eval_env_fn = env_fn if env is not None and opts.eval_episodes > 0 else None
    if eval_env_fn is not None:
        references = reference_returns(eval_env_fn, expert_spec(cfg), expert_section(cfg).reference_episodes,
                                       seed=2_000_000 + seed, dataset=dataset, cache=out / "references.json", task=task)
    train_log = CsvLog(out / "train.csv", ["step", "loss"])
    eval_log = CsvLog(out / "eval.csv", EVAL_COLUMNS)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc=f"bc {task}", unit="step", dynamic_ncols=True)
    t0 = time.perf_counter()
    n = obs_n.shape[0]
    bs = min(bc.batch_size, n)
    losses = []
    stopped = interrupted = False
    step = 0
    try:
        for step in range(1, steps + 1):
            idx = torch.randint(0, n, (bs,), generator=gen).to(dev)
            loss = ((actor(obs_n[idx]) - a_unit[idx]) ** 2).mean()
            if not torch.isfinite(loss):
                raise UserError(f"BC: non-finite loss at step {step} (check the demos' scale)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
            if step % 100 == 0 or step == steps:
                train_log.append({"step": step, "loss": float(np.mean(losses[-100:]))})
            if eval_env_fn is not None and (step % bc.eval_every == 0 or step == steps):
                res = evaluate(policy(step), None, opts.eval_episodes, 1_000_000 + seed, references, env=env)
                eval_log.append({"step": step, "time_s": time.perf_counter() - t0, **res})
                if bar is not None:
                    bar.write(f"[bc] step {step}: loss {np.mean(losses[-100:]):.4f} return {res['mean_return']:.1f}")
                if callback is not None and callback({"step": step, "metrics": {f"eval/{k}": v for k, v in res.items()}}) is False:
                    stopped = True
                    break
    except KeyboardInterrupt:  # SIGINT: the policy at this step is saved, so the logs end at a checkpoint
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
        if env is not None:
            env.close()
    if step == 0:
        raise KeyboardInterrupt
    ppath = policy(step).save(out / "policy.safetensors")
    if callback is not None:
        callback({"step": step, "checkpoint": str(ppath)})
    _plot(out, task)
    atomic_write_text(out / "summary.json", json.dumps({
        "method": "bc", "task": task, "seed": seed, "steps": step, "stopped_early": stopped, "policy": str(ppath),
        "references": references, "final_loss": float(np.mean(losses[-100:])),
        "final_eval": (eval_log.read() or [None])[-1], "train_s": time.perf_counter() - t0,
        "interrupted": interrupted}, indent=1, default=str))
    if interrupted:
        raise KeyboardInterrupt
    return ppath


def _plot(out: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from smiling_ros.methods.smiling.trainer import EVAL_COLUMNS, CsvLog

    tr = CsvLog(out / "train.csv", ["step", "loss"]).read()
    ev = CsvLog(out / "eval.csv", EVAL_COLUMNS).read()
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    if tr:
        ax[0].semilogy([float(r["step"]) for r in tr], [float(r["loss"]) for r in tr])
    ax[0].set_xlabel("gradient steps")
    ax[0].set_ylabel("BC loss (MSE, [-1, 1] actions)")
    key = "normalized_return" if ev and ev[-1]["normalized_return"] != "" else "mean_return"
    if ev:
        ax[1].plot([float(r["step"]) for r in ev], [float(r[key]) for r in ev], "o-")
    ax[1].set_xlabel("gradient steps")
    ax[1].set_ylabel(key.replace("_", " ") + " (eval)")
    fig.suptitle(f"BC on {task}")
    fig.tight_layout()
    tmp = out / ".learning_curve.tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out / "learning_curve.png")
