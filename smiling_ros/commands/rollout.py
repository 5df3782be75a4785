"""`smiling-ros rollout --config CFG --policy CKPT|scripted --episodes N --out DATASET_DIR`: roll a
policy (an expert checkpoint of any policy kind, or the task's scripted expert) out in the
in-process simulator and save the episodes as a dataset (observations, actions, success, and
the per-episode returns in meta: ``returns``, ``expert_return``). Recording over ROS 2 into a
bag is ``smiling-ros record-demos``."""
from __future__ import annotations

import argparse

from smiling_ros.io.outputs import add_overwrite_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="task config (YAML file or shipped name)")
    p.add_argument("--policy", default=None,
                   help="policy checkpoint, 'scripted' or 'random' (default: the config's expert.checkpoint)")
    p.add_argument("--episodes", type=int, default=5)
    p.add_argument("--out", required=True, help="dataset directory to write")
    p.add_argument("--seed", type=int, default=None, help="first episode's reset seed (default: config seed + 100)")
    p.add_argument("--state-only", action="store_true", help="drop the actions (state-only demonstrations)")
    add_overwrite_argument(p)
    p.add_argument("--force", dest="overwrite", action="store_true", help=argparse.SUPPRESS)  # older name
    p.add_argument("--device", default="cpu")


def run(args) -> int:
    from smiling_ros.config import load_config
    from smiling_ros.errors import UserError

    cfg = load_config(args.config)
    if args.episodes < 1:
        raise UserError(f"--episodes: must be >= 1, got {args.episodes}")
    from smiling_ros.io.outputs import prepare_output

    with prepare_output(args.out, "dir", args.overwrite) as output:
        return _rollout(args, cfg, output.path)


def _rollout(args, cfg, out) -> int:
    import numpy as np

    from smiling_ros.data.dataset import Dataset
    from smiling_ros.data.evaluation import expert_spec, resolve_policy, run_episodes
    from smiling_ros.errors import UserError
    from smiling_ros.methods.smiling.trainer import default_env_fn

    spec = args.policy or expert_spec(cfg)
    if spec is None:
        raise UserError(f"{cfg.path}: no --policy given and the config names no expert (expert.checkpoint)")
    seed = args.seed if args.seed is not None else cfg.seed + 100
    env = default_env_fn(cfg)()
    try:
        pol = resolve_policy(spec, env, device=args.device, seed=seed)
        from tqdm import tqdm

        eps = []
        for i in tqdm(range(args.episodes), desc="rollout", unit="episode"):
            eps += run_episodes(pol, env, 1, seed + i, record=True)
    finally:
        env.close()
    returns = [e["return"] for e in eps]
    succ = [e["success"] for e in eps]
    meta = {"source": "rollout", "task": cfg.task.env, "policy": str(spec), "rate_hz": cfg.rate_hz, "seed": seed,
            "returns": returns, "expert_return": float(np.mean(returns)),
            "expert_success_rate": None if None in succ else float(np.mean(succ))}
    ds = Dataset.from_episodes([(e["obs"], None if args.state_only else e["act"]) for e in eps], meta,
                               None if None in succ else succ)
    ds.save(out)
    print(f"rollout: {len(eps)} episodes, {len(ds.obs)} steps -> {out}; return {np.mean(returns):.1f} +- "
          f"{np.std(returns):.1f}" + ("" if None in succ else f", success {np.mean(succ):.2f}"))
    return 0
