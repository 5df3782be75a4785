"""``train-bc``: behavioural cloning, the same code path as DBC with ``lambda_dm = 0``.

State-action demos -> deterministic MLP policy (``mlp_policy``): observations z-scored with the demo
statistics, MSE between the policy's and the demonstrated actions in z-scored action units, AdamW with
cosine decay (:func:`smiling_ros.methods.dbc.train.train_dbc`). Options: ``smiling.bc`` (hidden, steps,
lr, batch_size, weight_decay, eval_every). Action bounds: :func:`smiling_ros.learn.bounds.action_bounds`.

Python API: ``fit(cfg, dataset, *, out, env_fn=None, callback=None, steps=None, seed=None,
progress=True) -> TrainResult`` (``train_bc`` returns its policy path). The callback receives
``{'step', 'metrics'}`` at each evaluation (False stops) and ``{'step', 'checkpoint'}`` at the end.
Run directory: policy.safetensors, train.csv (step, loss, ...), eval.csv, learning_curve.png, summary.json.
"""
from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import atomic_write_text
from smiling_ros.learn.fit import TrainResult


def fit(cfg: Any, dataset: Any, *, out: str | Path, env_fn: Any = None, callback: Any = None,
        steps: Optional[int] = None, seed: Optional[int] = None, progress: bool = True,
        device: str = "auto", overwrite: bool = False) -> TrainResult:
    from smiling_ros.data.evaluation import EVAL_COLUMNS, evaluate, expert_spec, reference_returns
    from smiling_ros.learn.bounds import action_bounds
    from smiling_ros.learn.logger import RunLogger, last_row
    from smiling_ros.learn.plots import plot_learning_curve
    from smiling_ros.methods.dbc.train import DBCConfig, train_dbc
    from smiling_ros.methods.smiling.config import expert_section, smiling_section
    from smiling_ros.methods.smiling.trainer import dataset_fingerprint, default_env_fn

    opts = smiling_section(cfg)
    bc = opts.bc
    seed = int(seed if seed is not None else (opts.seed if opts.seed is not None else cfg.seed))
    steps = int(steps if steps is not None else bc.steps)
    if steps < 1:
        raise UserError(f"--steps: must be >= 1, got {steps}")
    task = cfg.task.env or "robot"
    dataset.require_actions("BC")
    name = dataset.meta.get("path", "dataset")
    env = None
    if cfg.task.env or env_fn is not None:
        env_fn = env_fn or default_env_fn(cfg)
        env = env_fn()
        obs_dim = int(np.prod(env.observation_space.shape))
        if dataset.obs_dim != obs_dim:
            env.close()
            raise UserError(f"{name}: demonstrations have {dataset.obs_dim}-dim observations but '{task}' has {obs_dim} "
                            f"(demos of another task?)")
    try:
        low, high, _ = action_bounds(cfg, dataset)
        if len(dataset.obs) < 2:
            raise UserError(f"{name}: needs at least 2 demonstration pairs for BC")
        run = Path(out)
        if (run / "policy.safetensors").exists() and not overwrite:
            raise UserError(f"{run}: already holds a trained policy; pass --overwrite to replace it or choose "
                            f"another --out")
        run.mkdir(parents=True, exist_ok=True)
        meta = {"task": task, "config": cfg.to_dict(),
                "dataset": {"path": dataset.meta.get("path"), "fingerprint": dataset_fingerprint(dataset),
                            "states": int(len(dataset.obs))}}
        references = None
        evaluating = env is not None and opts.eval_episodes > 0
        if evaluating:
            references = reference_returns(env_fn, expert_spec(cfg), expert_section(cfg).reference_episodes,
                                           seed=2_000_000 + seed, dataset=dataset, cache=run / "references.json",
                                           task=task)
        eval_log = RunLogger(run / "eval.csv", EVAL_COLUMNS)
        t0 = time.perf_counter()
        section = DBCConfig(hidden=list(bc.hidden), steps=steps, lr=bc.lr, batch_size=bc.batch_size, lambda_dm=0.0,
                            log_every=math.gcd(100, bc.eval_every))
        latest: dict[str, Any] = {}

        def on_log(step: int, row: dict[str, float], policy: Any) -> Optional[bool]:
            latest.update(step=step, policy=policy, loss=row["loss"])
            if not evaluating or (step % bc.eval_every and step != steps):
                return True
            pol = copy.deepcopy(policy)
            res = evaluate(pol, None, opts.eval_episodes, 1_000_000 + seed, references, env=env)
            eval_log.log(step, time_s=time.perf_counter() - t0, **res)
            if progress:
                print(f"[bc] step {step}: loss {row['loss']:.4f} return {res['mean_return']:.1f}", flush=True)
            if callback is not None:
                return callback({"step": step, "metrics": {f"eval/{k}": v for k, v in res.items()}})
            return True

        interrupted = False
        try:
            res = train_dbc(dataset, section, low, high, seed=seed, log_path=run / "train.csv", progress=progress,
                            meta=meta, on_log=on_log, weight_decay=bc.weight_decay)
            policy, history = res.policy, res.history
        except KeyboardInterrupt:  # SIGINT: the policy is saved, so the logs end at a checkpoint
            if not latest:
                raise
            interrupted = True
            policy, history = latest["policy"], [{"step": latest["step"], "loss": latest["loss"]}]
    finally:
        if env is not None:
            env.close()
    step = int(history[-1]["step"]) if history else 0
    policy.meta["step"] = step
    ppath = policy.save(run / "policy.safetensors")
    if callback is not None:
        callback({"step": step, "checkpoint": str(ppath)})
    plot_learning_curve(run, f"BC on {task}", train_key="loss", xlabel="gradient steps",
                        train_label="BC loss (MSE, z-scored actions)")
    final_loss = float(history[-1]["loss"]) if history else float("nan")
    summary = {"method": "bc", "task": task, "seed": seed, "steps": step, "stopped_early": step < steps,
               "policy": str(ppath), "references": references, "final_loss": final_loss,
               "final_eval": last_row(eval_log), "train_s": time.perf_counter() - t0,
               "interrupted": interrupted}
    atomic_write_text(run / "summary.json", json.dumps(summary, indent=1, default=str))
    if interrupted:
        raise KeyboardInterrupt
    return TrainResult(ppath, {"policy": ppath, "log": run / "train.csv", "eval": run / "eval.csv"}, summary)


def train_bc(cfg: Any, dataset: Any, out_dir: str | Path, env_fn: Any = None, steps: Optional[int] = None,
             device: str = "auto", callback: Any = None, progress: bool = True, seed: Optional[int] = None,
             overwrite: bool = False) -> Path:
    """:func:`fit`, returning the policy's path (the trainer node's and the CLI's call)."""
    return fit(cfg, dataset, out=out_dir, env_fn=env_fn, callback=callback, steps=steps, seed=seed, progress=progress,
               device=device, overwrite=overwrite).policy
