"""`smiling-ros train-dbc`: diffusion-model-augmented behavioural cloning into an ``mlp_policy``.

Writes OUT (.safetensors + .json sidecar), OUT.dm.safetensors (the frozen joint diffusion model),
OUT.train.csv and OUT.train.png (losses against step).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from smiling_ros.commands import add_offline_arguments, offline_inputs


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_offline_arguments(p, "output policy checkpoint (.safetensors)", _own_arguments)


def _own_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=None, help="policy gradient steps (default: dbc.steps)")
    p.add_argument("--dm-steps", type=int, default=None, help="diffusion pre-training steps (default: dbc.dm_steps)")
    p.add_argument("--lambda", dest="lambda_dm", type=float, default=None, help="weight of the diffusion term")
    p.add_argument("--no-dm", action="store_true", help="plain BC (lambda = 0; the ablation baseline)")
    p.add_argument("--no-normalize-dm", action="store_true",
                   help="use L_agent alone instead of max(L_agent - L_expert, 0) (ablation)")
    p.add_argument("--dm", default=None, help="reuse a trained joint diffusion model (OUT.dm.safetensors of a run)")
    p.add_argument("--episodes", type=int, default=None, help="use only the first N episodes of the dataset")


def run(args: argparse.Namespace) -> int:
    from smiling_ros.io.outputs import prepare_output, require_name, sibling
    from smiling_ros.learn.checkpoint import checkpoint_path, sidecar
    from smiling_ros.learn.logger import log_path
    from smiling_ros.methods.dbc.train import DBCConfig, JointDiffusion

    lam = 0.0 if args.no_dm else args.lambda_dm
    cfg, dcfg, ds = offline_inputs(args, DBCConfig, "dbc", {
        "steps": args.steps, "dm_steps": args.dm_steps, "lambda_dm": lam,
        "normalize_dm": False if args.no_normalize_dm else None})
    dm = JointDiffusion.load(args.dm, ds.obs_dim, ds.act_dim) if args.dm and dcfg.lambda_dm > 0 else None
    out = checkpoint_path(require_name(args.out))
    log = log_path(out)
    written = [Path(args.out), sidecar(out), log, log.with_suffix(".png")]
    if dcfg.lambda_dm > 0 and dm is None:
        written += [sibling(out, ".dm.safetensors"), sibling(out, ".dm.json")]
    with prepare_output(out, "file", args.overwrite, also=written):
        return _train(args, cfg, dcfg, ds, dm, out)


def _train(args, cfg, dcfg, ds, dm, out) -> int:
    import torch

    from smiling_ros.methods.dbc.train import fit

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    res = fit(cfg, ds, out=out, section=dcfg, seed=args.seed, dm=dm, progress=not args.quiet)
    s = res.summary
    print(f"wrote {res.policy} ({s['method']}, {s['wall_s']:.0f} s; final bc {s.get('bc', float('nan')):.4f}, "
          f"dm {s.get('dm', float('nan')):.4f}); log {res.files['log']}")
    return 0
