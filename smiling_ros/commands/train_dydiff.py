"""`smiling-ros train-dydiff`: a DyDiff world model (window diffusion, dynamics ensemble, reward model)
from a dataset; optionally an offline policy (TD3+BC on real + DyDiff rollouts) too.

Writes OUT (kind ``dydiff``; ``train-smiling --world-model OUT`` runs SMILING inside it), OUT.train.csv and
OUT.train.png; with ``--policy-out P`` also the ``mlp_policy`` P and P.train.csv/.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from smiling_ros.commands import add_offline_arguments, offline_inputs


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_offline_arguments(p, "world-model checkpoint to write (.safetensors)", _own_arguments)


def _own_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="window-model gradient steps (default: dydiff.steps)")
    p.add_argument("--ensemble-steps", type=int, default=None, help="ensemble gradient steps (default: dydiff.ensemble_steps)")
    p.add_argument("--horizon", type=int, default=None, help="window length H (default: dydiff.horizon)")
    p.add_argument("--policy-out", default=None, help="also train TD3+BC with DyDiff rollouts; write this mlp_policy")
    p.add_argument("--offline-steps", type=int, default=None, help="TD3+BC steps (default: dydiff.td3bc.steps)")
    p.add_argument("--no-rollouts", action="store_true", help="TD3+BC on the real data only (the ablation)")


def run(args: argparse.Namespace) -> int:
    import contextlib

    from smiling_ros.errors import UserError
    from smiling_ros.io.outputs import prepare_output, require_name
    from smiling_ros.learn.checkpoint import checkpoint_path, sidecar
    from smiling_ros.learn.logger import log_path
    from smiling_ros.methods.dydiff.train import DyDiffConfig

    cfg, dcfg, ds = offline_inputs(args, DyDiffConfig, "dydiff", {
        "steps": args.steps, "ensemble_steps": args.ensemble_steps, "horizon": args.horizon})
    out = checkpoint_path(require_name(args.out))
    pout = checkpoint_path(require_name(args.policy_out, "--policy-out")) if args.policy_out is not None else None
    with contextlib.ExitStack() as stack:
        log = log_path(out)
        stack.enter_context(prepare_output(out, "file", args.overwrite,
                                           also=[Path(args.out), sidecar(out), log, log.with_suffix(".png")]))
        if pout is not None:
            if pout == out:
                raise UserError(f"--policy-out: {pout} is also --out; give the policy another name")
            plog = log_path(pout)
            stack.enter_context(prepare_output(pout, "file", args.overwrite, what="--policy-out",
                                               also=[Path(args.policy_out), sidecar(pout), plog, plog.with_suffix(".png")]))
        return _train(args, cfg, dcfg, ds, out, pout)


def _train(args, cfg, dcfg, ds, out, pout) -> int:
    import torch

    from smiling_ros.methods.dydiff.train import fit

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    res = fit(cfg, ds, out=out, section=dcfg, seed=args.seed, policy_out=pout, offline_steps=args.offline_steps,
              rollouts=not args.no_rollouts, progress=not args.quiet)
    s = res.summary
    print(f"wrote {res.files['world_model']} (world model, H={s['horizon']}, reward: {s['reward_kind']}, "
          f"{s['train_wall_s']:.0f} s)")
    if pout is not None:
        print(f"wrote {res.policy} (offline policy, {s['policy_method']})")
    return 0
