"""`smiling-ros train-smiling --config CFG --dataset DIR --out RUN_DIR`: SMILING (score players +
DS-cost reward + SAC) against the config's simulator, or a DyDiff world model (--world-model).
Writes logs, checkpoints, a learning curve and RUN_DIR/policy.safetensors (an mlp_policy)."""
from __future__ import annotations

import argparse
import json

from smiling_ros.io.outputs import add_overwrite_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="task config (YAML file or shipped name)")
    p.add_argument("--dataset", required=True, help="demonstration dataset directory (import-bag / rollout)")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--steps", type=int, default=None, help="env steps in total (default: smiling.total_steps)")
    p.add_argument("--variant", choices=["state", "state_action"], default=None,
                   help="diffuse states (default) or state-action pairs")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--n-envs", type=_n_envs, default=None, metavar="N",
                   help="simulator copies stepped together (default: smiling.n_envs); counts stay in env steps")
    p.add_argument("--world-model", default=None, metavar="CKPT",
                   help="train against a DyDiff world model instead of the simulator")
    p.add_argument("--no-progress", action="store_true")
    add_overwrite_argument(p)


def _n_envs(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"an integer >= 1, got '{text}'")
    return n


def env_fns(cfg, world_model):
    """(env_fn, eval_env_fn): the world model for training when given; evaluation on the simulator
    when the config has one."""
    from smiling_ros.methods.smiling.trainer import default_env_fn

    if not world_model:
        return None, None
    try:
        from smiling_ros.methods.dydiff.world_model_env import make_world_model_env
    except ModuleNotFoundError as exc:
        from smiling_ros.errors import UserError

        raise UserError(f"--world-model: world-model support is not available ({exc.name})") from None

    train_fn = lambda: make_world_model_env(world_model, cfg)  # noqa: E731
    return train_fn, (default_env_fn(cfg) if cfg.task.env else train_fn)


def run_method(args, method: str) -> int:
    import torch

    from smiling_ros.config import load_config
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.methods.smiling.trainer import run as run_loop

    if torch.get_num_threads() > 4:
        torch.set_num_threads(4)
    from smiling_ros.io.outputs import prepare_output

    cfg = load_config(args.config)
    ds = Dataset.load(args.dataset)
    env_fn, eval_fn = env_fns(cfg, args.world_model)
    with prepare_output(args.out, "dir", args.overwrite, resume=args.resume) as out:
        path = run_loop(method, cfg, ds, out.path, env_fn=env_fn, eval_env_fn=eval_fn, total_steps=args.steps,
                        resume=args.resume, device=args.device, progress=not args.no_progress, variant=args.variant,
                        seed=args.seed, n_envs=args.n_envs, overwrite=args.overwrite)
    _report(args.out, path)
    return 0


def _report(out, path) -> None:
    from pathlib import Path

    s = json.loads((Path(out) / "summary.json").read_text())
    print(summary_line(f"{s['method']}: {s['steps']} env steps, policy {path}", s.get("final_eval")))


def summary_line(line: str, ev) -> str:
    """``line`` followed by a run's final evaluation (return, normalised return, success)."""
    ev = ev or {}
    if ev:
        line += f"; eval return {float(ev['mean_return']):.1f}"
        if ev.get("normalized_return"):
            line += f", normalised {float(ev['normalized_return']):.2f}"
        if ev.get("success_rate"):
            line += f", success {float(ev['success_rate']):.2f}"
    return line


def run(args) -> int:
    return run_method(args, "smiling")
