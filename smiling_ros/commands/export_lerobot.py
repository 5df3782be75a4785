"""`smiling-ros export-lerobot DATASET OUT`: a dataset -> a LeRobotDataset v3 directory.

OUT gets meta/info.json (codebase_version v3.0, fps, named features observation.state and
action), meta/stats.json, meta/tasks.parquet, meta/episodes/ and data/ parquet files; see
smiling_ros/io/lerobot.py. Load it with ``LeRobotDataset(repo_id, root=OUT)``.
"""
from __future__ import annotations

import argparse

from smiling_ros.io.outputs import add_overwrite_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", metavar="DATASET", help="dataset directory (import-bag, rollout, import-lerobot)")
    p.add_argument("out", metavar="OUT", help="directory to write the LeRobot v3 dataset into")
    p.add_argument("--task", default="", help="task text of every episode (default: the dataset's task)")
    p.add_argument("--robot-type", default=None, help="info.json robot_type (default: none)")
    add_overwrite_argument(p)


def run(args: argparse.Namespace) -> int:
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.io.lerobot import export_lerobot
    from smiling_ros.io.outputs import prepare_output

    ds = Dataset.load(args.dataset)
    with prepare_output(args.out, "dir", overwrite=args.overwrite) as out:
        out.ensure_dir()
        info = export_lerobot(ds, out.path, task=args.task, robot_type=args.robot_type, overwrite=args.overwrite)
    feats = ", ".join(f"{k} {v['shape']}" for k, v in info["features"].items() if k in ("observation.state", "action"))
    print(f"exported {args.dataset}: {info['total_episodes']} episodes, {info['total_frames']} frames at "
          f"{info['fps']} fps ({feats}) -> {args.out} (LeRobot {info['codebase_version']})")
    return 0
