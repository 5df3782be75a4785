"""`smiling-ros train-dydiff`: a DyDiff world model (window diffusion, dynamics ensemble, reward model)
from a dataset; optionally an offline policy (TD3+BC on real + DyDiff rollouts) too.

Writes OUT (kind ``dydiff``; ``train-smiling --world-model OUT`` runs SMILING inside it), OUT_log.csv and
OUT_log.png; with ``--policy-out P`` also the ``mlp_policy`` P and P_log.csv/.png.
"""
from __future__ import annotations

import argparse

from smiling_ros.io.outputs import add_overwrite_argument


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
    add_overwrite_argument(p)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import dataclasses

    from smiling_ros.config import load_config
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.errors import UserError
    from smiling_ros.io.outputs import prepare_output, require_name, sibling
    from smiling_ros.learn.checkpoint import checkpoint_path, sidecar
    from smiling_ros.learn.common import action_bounds, check_dataset_dims
    from smiling_ros.methods.dydiff.train import DyDiffConfig

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
    out = checkpoint_path(require_name(args.out))
    log = sibling(out, "_log")
    pout = checkpoint_path(require_name(args.policy_out, "--policy-out")) if args.policy_out is not None else None
    plog = sibling(pout, "_log") if pout is not None else None
    with contextlib.ExitStack() as stack:
        stack.enter_context(prepare_output(out, "file", args.overwrite,
                                           also=[sidecar(out), sibling(log, ".csv"), sibling(log, ".png")]))
        if pout is not None:
            if pout == out:
                raise UserError(f"--policy-out: {pout} is also --out; give the policy another name")
            stack.enter_context(prepare_output(pout, "file", args.overwrite, what="--policy-out",
                                               also=[sidecar(pout), sibling(plog, ".csv"), sibling(plog, ".png")]))
        return _train(args, cfg, dcfg, ds, low, high, out, log, pout, plog)


def _train(args, cfg, dcfg, ds, low, high, out, log, pout, plog) -> int:
    import torch

    from smiling_ros.methods.dydiff.train import train_offline, train_world_model

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    seed = cfg.seed if args.seed is None else args.seed
    task = ds.meta.get("task") or cfg.task.env
    wm = train_world_model(ds, dcfg, low, high, seed=seed, log_prefix=log,
                           progress=not args.quiet, meta={"task": task, "dataset": str(args.dataset)},
                           max_episode_steps=cfg.task.max_episode_steps)
    path = wm.save(out, {"config": cfg.to_dict()})
    print(f"wrote {path} (world model, H={wm.H}, reward: {wm.meta['reward_kind']}, {wm.meta['train_wall_s']:.0f} s)")
    if pout is not None:
        agent = train_offline(ds, dcfg, low, high, world_model=None if args.no_rollouts else wm, seed=seed,
                              steps=args.offline_steps, log_prefix=plog,
                              progress=not args.quiet,
                              meta={"task": task, "max_episode_steps": cfg.task.max_episode_steps, "world_model": str(path)})
        ppath = agent.policy().save(pout)
        print(f"wrote {ppath} (offline policy, {agent.policy().meta['method']})")
    return 0
