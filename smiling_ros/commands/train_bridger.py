"""`smiling-ros train-bridger`: train a BRIDGER action refiner from a dataset and a source.

    smiling-ros train-bridger --config arm_reach --dataset demos/ --source heuristic --out bridger.safetensors

Writes OUT (.safetensors + .json sidecar, self-contained: the source is embedded), OUT.train.csv
(losses), OUT.train.png (loss plot), and with --eval-episodes > 0 OUT.eval.json (success rate /
return in the task's env for each step count of bridger.eval_steps). ``--source cvae`` also
writes the CVAE as OUT.cvae.safetensors (reusable later as ``--source OUT.cvae.safetensors``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from smiling_ros.io.outputs import add_overwrite_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="task config (file or shipped name, e.g. arm_reach)")
    p.add_argument("--dataset", required=True, help="dataset directory with actions (import-bag / rollout output)")
    p.add_argument("--source", default=None,
                   help="gaussian | cvae | heuristic | a policy checkpoint (mlp_policy, cvae); default: bridger.source")
    p.add_argument("--out", required=True, help="output checkpoint path (.safetensors)")
    p.add_argument("--steps", type=int, default=None, help="sampling steps N stored in the checkpoint (default bridger.steps)")
    p.add_argument("--train-steps", type=int, default=None, help="gradient steps (default bridger.train_steps)")
    p.add_argument("--eval-episodes", type=int, default=None,
                   help="episodes per step count for evaluation in the env (default bridger.eval_episodes; 0: none)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: the config's seed)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default bridger.device)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_overwrite_argument(p)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from smiling_ros.config import load_config
    from smiling_ros.errors import UserError
    from smiling_ros.io.outputs import prepare_output, require_name, sibling
    from smiling_ros.learn.checkpoint import checkpoint_path, sidecar
    from smiling_ros.learn.device import select_device
    from smiling_ros.methods.bridger.train import load_section

    cfg = load_config(args.config)
    sec = load_section(cfg)
    if args.steps is not None:
        if args.steps < 1:
            raise UserError(f"--steps: must be >= 1, got {args.steps}")
        sec = dataclasses.replace(sec, steps=args.steps)
    if args.train_steps is not None:
        if args.train_steps < 1:
            raise UserError(f"--train-steps: must be >= 1, got {args.train_steps}")
        sec = dataclasses.replace(sec, train_steps=args.train_steps)
    episodes = sec.eval_episodes if args.eval_episodes is None else args.eval_episodes
    if episodes < 0:
        raise UserError(f"--eval-episodes: must be >= 0, got {episodes}")
    seed = cfg.seed if args.seed is None else args.seed
    device = select_device(args.device or sec.device)
    torch.set_num_threads(1)  # small nets: one thread is fastest on a shared CPU

    out = checkpoint_path(require_name(args.out))
    spec = args.source or sec.source
    written = [Path(args.out), sidecar(out), sibling(out, ".train.csv"), sibling(out, ".train.png"), sibling(out, ".eval.json")]
    if spec == "cvae":
        written += [sibling(out, ".cvae.safetensors"), sibling(out, ".cvae.json"), sibling(out, ".cvae.csv"),
                    sibling(out, ".cvae.png")]
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.methods.bridger.train import make_source

    ds = Dataset.load(args.dataset)
    ds.require_actions("train-bridger")
    task = ds.meta.get("task") or ""
    if task and cfg.task.env and task != cfg.task.env:
        raise UserError(f"{args.dataset}: recorded for task '{task}', but {cfg.path} is for '{cfg.task.env}'")
    # every source but the CVAE (trained with the policy) is built and checked before anything is written
    source = spec if spec == "cvae" else make_source(spec, ds, cfg, sec, seed=seed, device=device)
    with prepare_output(out, "file", args.overwrite, also=written) as output:
        return _run(args, cfg, sec, episodes, seed, device, output.path, spec, source, ds)


def _run(args, cfg, sec, episodes, seed, device, out, spec, source, ds) -> int:
    from smiling_ros.methods.bridger.train import fit

    print(f"train-bridger: {ds.num_episodes} episodes, {len(ds.obs)} steps, obs {ds.obs_dim}, act {ds.act_dim}; "
          f"source {spec}; device {device}")
    res = fit(cfg, ds, out=out, section=sec, source=source, seed=seed, device=device,
              eval_episodes=episodes if cfg.task.env else 0, progress=not args.no_progress)
    print(f"train-bridger: wrote {res.policy} (bounds from {res.summary['bounds_from']}; log {res.files['log']}, "
          f"plot {res.files['log'].with_suffix('.png')})")
    rows = res.summary["eval"]
    if rows:
        side = "sides" in rows[0]
        print(f"{'steps':>5} {'success':>8} {'return':>14}" + ("  sides (L/R/none)" if side else ""))
        for r in rows:
            sr = "-" if r["success_rate"] is None else f"{r['success_rate']:.2f}"
            line = f"{r['steps']:>5} {sr:>8} {r['mean_return']:>8.2f}±{r['std_return']:<5.2f}"
            if side:
                s = r["sides"]
                line += f"  {s['left']}/{s['right']}/{s['none']}"
            print(line)
        print(f"train-bridger: evaluation in {res.files['eval']}")
    return 0
