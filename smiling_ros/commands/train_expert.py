"""`smiling-ros train-expert --config CFG --steps N --out CKPT`: SAC (stable-baselines3) on the
env's true reward; the actor's mean is exported as an ``mlp_policy`` checkpoint at CKPT, with
its evaluated return in the metadata (``expert_return``). The SAC run (logs, resumable state)
goes to ``--run-dir`` (default: CKPT without suffix + ``_run/``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from smiling_ros.io.outputs import add_overwrite_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="task config (YAML file or shipped name)")
    p.add_argument("--steps", type=int, default=None, help="env steps (default: expert.steps)")
    p.add_argument("--out", required=True, help="expert checkpoint to write (.safetensors)")
    p.add_argument("--run-dir", default=None, help="SAC run directory (logs, state for --resume)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --run-dir")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes for the final expert return")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--no-progress", action="store_true")
    add_overwrite_argument(p)


def run(args) -> int:
    import torch

    from smiling_ros.config import load_config
    from smiling_ros.methods.smiling.config import expert_section
    from smiling_ros.methods.smiling.trainer import run as run_loop

    if torch.get_num_threads() > 4:
        torch.set_num_threads(4)
    import contextlib

    from smiling_ros.io.outputs import prepare_output, require_name, sibling
    from smiling_ros.learn.checkpoint import checkpoint_path, sidecar

    cfg = load_config(args.config)
    ex = expert_section(cfg)
    out = checkpoint_path(require_name(args.out))
    run_dir = require_name(args.run_dir, "--run-dir") if args.run_dir is not None else sibling(out, "_run")
    steps = args.steps if args.steps is not None else ex.steps
    with contextlib.ExitStack() as stack:
        stack.enter_context(prepare_output(out, "file", args.overwrite, also=[Path(args.out), sidecar(out)]))
        stack.enter_context(prepare_output(run_dir, "dir", args.overwrite, resume=args.resume, what="--run-dir"))
        return _train(args, cfg, ex, out, run_dir, steps, run_loop)


def _train(args, cfg, ex, out, run_dir, steps, run_loop) -> int:
    from smiling_ros.data.evaluation import evaluate
    from smiling_ros.learn.policy import load_policy
    from smiling_ros.methods.smiling.trainer import default_env_fn

    ppath = run_loop("sac", cfg, None, run_dir, total_steps=steps, resume=args.resume, device=args.device,
                     progress=not args.no_progress, seed=args.seed, sac_opts=ex.sac, overwrite=args.overwrite,
                     loop_opts={"eval_every": ex.eval_every, "eval_episodes": ex.eval_episodes,
                                "checkpoint_every": ex.checkpoint_every, "log_every": 1000})
    pol = load_policy(ppath, device="cpu")
    res = evaluate(pol, default_env_fn(cfg), args.eval_episodes, seed=3_000_000)
    pol.save(out, {"expert_return": res["mean_return"], "expert_return_std": res["std_return"],
                   "expert_success_rate": res["success_rate"], "trained_steps": steps,
                   "command": f"smiling-ros train-expert --config {args.config} --steps {steps} --out {args.out}"})
    print(f"expert: {out}  return {res['mean_return']:.1f} +- {res['std_return']:.1f} over {args.eval_episodes} "
          f"episodes" + (f", success {res['success_rate']:.2f}" if res["success_rate"] is not None else ""))
    return 0
