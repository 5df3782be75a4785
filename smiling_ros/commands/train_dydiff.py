"""`smiling-ros train-dydiff`: a DyDiff world model (window diffusion, dynamics ensemble, reward model)
from a dataset; optionally an offline policy (TD3+BC on real + DyDiff rollouts) too.

Writes OUT (kind ``dydiff``; ``train-smiling --world-model OUT`` runs SMILING inside it), OUT_log.csv and
OUT_log.png; with ``--policy-out P`` also the ``mlp_policy`` P and P_log.csv/.png.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="task config (YAML path or shipped name)")
    p.add_argument("--dataset", required=True, help="dataset directory with actions (from import-bag or rollout)")
    p.add_argument("--out", required=True, help="world-model checkpoint to write (.safetensors)")
    p.add_argument("--steps", type=int, default=None, help="window-model gradient steps (default: dydiff.steps)")
    p.add_argument("--ensemble-steps", type=int, default=None, help="ensemble gradient steps (default: dydiff.ensemble_steps)")
    p.add_argument("--horizon", type=int, default=None, help="window length H (default: dydiff.horizon)")
    p.add_argument("--policy-out", default=None, help="also train TD3+BC with DyDiff rollouts; write this mlp_policy")
    p.add_argument("--offline-steps", type=int, default=None, help="TD3+BC steps (default: dydiff.td3bc.steps)")
    p.add_argument("--no-rollouts", action="store_true", help="TD3+BC on the real data only (the ablation)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: config seed)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    import torch

    from smiling_ros.config import load_config
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.learn.common import action_bounds, check_dataset_dims
    from smiling_ros.methods.dydiff.train import DyDiffConfig, train_offline, train_world_model

    cfg = load_config(args.config)
    dcfg = cfg.section(DyDiffConfig, "dydiff")
    over = {k: v for k, v in (("steps", args.steps), ("ensemble_steps", args.ensemble_steps),
                              ("horizon", args.horizon)) if v is not None}
    dcfg = dataclasses.replace(dcfg, **over)
    dcfg.validate("command line")
    ds = Dataset.load(args.dataset)
    ds.require_actions("train-dydiff")
    check_dataset_dims(ds, cfg)
    low, high = action_bounds(cfg, ds)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    seed = cfg.seed if args.seed is None else args.seed
    task = ds.meta.get("task") or cfg.task.env
    wm = train_world_model(ds, dcfg, low, high, seed=seed, log_prefix=out.with_name(out.stem + "_log"),
                           progress=not args.quiet, meta={"task": task, "dataset": str(args.dataset)},
                           max_episode_steps=cfg.task.max_episode_steps)
    path = wm.save(out, {"config": cfg.to_dict()})
    print(f"wrote {path} (world model, H={wm.H}, reward: {wm.meta['reward_kind']}, {wm.meta['train_wall_s']:.0f} s)")
    if args.policy_out:
        pout = Path(args.policy_out)
        if pout.suffix != ".safetensors":
            pout = pout.with_suffix(".safetensors")
        agent = train_offline(ds, dcfg, low, high, world_model=None if args.no_rollouts else wm, seed=seed,
                              steps=args.offline_steps, log_prefix=pout.with_name(pout.stem + "_log"),
                              progress=not args.quiet,
                              meta={"task": task, "max_episode_steps": cfg.task.max_episode_steps, "world_model": str(path)})
        ppath = agent.policy().save(pout)
        print(f"wrote {ppath} (offline policy, {agent.policy().meta['method']})")
    return 0
