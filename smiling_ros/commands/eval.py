"""`smiling-ros eval --checkpoint CKPT --episodes N [--config CFG] [--json]`: returns, success
rate and normalised return of any policy checkpoint (or 'scripted' / 'random' with --config).
Without --config the task config embedded in the checkpoint is used."""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="policy checkpoint (or run dir), 'scripted' or 'random'")
    p.add_argument("--config", default=None, help="task config (default: the one stored in the checkpoint)")
    p.add_argument("--episodes", type=int, default=10)
    p.add_argument("--seed", type=int, default=5_000_000, help="reset seed of the first episode")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    import json
    from pathlib import Path

    from smiling_ros.config import config_from_dict, load_config
    from smiling_ros.data.evaluation import evaluate, expert_spec, load_references, reference_returns
    from smiling_ros.errors import UserError
    from smiling_ros.learn.checkpoint import load_checkpoint
    from smiling_ros.methods.smiling.config import expert_section
    from smiling_ros.methods.smiling.trainer import default_env_fn

    if args.episodes < 1:
        raise UserError(f"--episodes: must be >= 1, got {args.episodes}")
    spec = args.checkpoint
    ckpt = None
    if spec not in ("scripted", "random"):
        ckpt = load_checkpoint(spec, require_integrity=True)  # verified before anything runs from it
        spec = str(ckpt.path)
    if args.config:
        cfg = load_config(args.config)
    elif ckpt is not None and isinstance(ckpt.meta.get("config"), dict):
        cfg = config_from_dict(ckpt.meta["config"], f"{ckpt.path} (embedded config)")
    else:
        raise UserError("--config is required (the checkpoint carries no task config)")
    task = cfg.task.env
    if ckpt is not None:
        from smiling_ros.learn.policy import POLICY_LOADERS

        ckpt.require(tuple(POLICY_LOADERS), task=task)
    env_fn = default_env_fn(cfg)
    refs = load_references(Path(spec).parent / "references.json", task) if ckpt is not None else None
    if refs is None or refs.get("expert") is None:
        refs = reference_returns(env_fn, expert_spec(cfg), expert_section(cfg).reference_episodes, seed=2_000_000,
                                 task=task)
    res = evaluate(spec, env_fn, args.episodes, args.seed, refs, device=args.device)
    doc = {"checkpoint": spec, "task": task, "episodes": args.episodes, "seed": args.seed, **res, "references": refs}
    if args.json:
        print(json.dumps(doc))
    else:
        print(f"{spec} on {task}: return {res['mean_return']:.2f} +- {res['std_return']:.2f} over {args.episodes} episodes")
        if res["success_rate"] is not None:
            print(f"  success rate {res['success_rate']:.2f}")
        if res["normalized_return"] is not None:
            print(f"  normalised return {res['normalized_return']:.3f} (random {refs['random']:.1f}, expert {refs['expert']:.1f})")
    return 0
