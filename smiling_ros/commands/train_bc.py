"""`smiling-ros train-bc --config CFG --dataset DIR --out RUN_DIR`: behavioural cloning baseline
(state-action demos; options in smiling.bc). Writes RUN_DIR/policy.safetensors (mlp_policy)."""
from __future__ import annotations

import argparse

from smiling_ros.io.outputs import add_overwrite_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="task config (YAML file or shipped name)")
    p.add_argument("--dataset", required=True, help="demonstration dataset with actions")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--steps", type=int, default=None, help="gradient steps (default: smiling.bc.steps)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    add_overwrite_argument(p)


def run(args) -> int:
    import json
    from pathlib import Path

    from smiling_ros.config import load_config
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.io.outputs import prepare_output
    from smiling_ros.methods.bc import train_bc

    cfg = load_config(args.config)
    ds = Dataset.load(args.dataset)
    with prepare_output(args.out, "dir", args.overwrite) as out:
        path = train_bc(cfg, ds, out.path, steps=args.steps, device=args.device, progress=not args.no_progress,
                        seed=args.seed, overwrite=args.overwrite)
    from smiling_ros.commands.train_smiling import summary_line

    s = json.loads((Path(args.out) / "summary.json").read_text())
    print(summary_line(f"bc: {s['steps']} steps, loss {s['final_loss']:.4f}, policy {path}", s.get("final_eval")))
    return 0
