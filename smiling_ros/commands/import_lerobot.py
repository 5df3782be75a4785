"""`smiling-ros import-lerobot DIR --out DATASET`: a local LeRobotDataset v3 of state and action
features -> a dataset. Every 1-D numeric ``observation.*`` feature becomes the observation (in
info.json order), ``action`` the action; image and video features are left out. See
smiling_ros/io/lerobot.py.
"""
from __future__ import annotations

import argparse

from smiling_ros.io.outputs import add_overwrite_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="DIR", help="LeRobot v3 dataset directory (with meta/info.json)")
    p.add_argument("--out", required=True, help="dataset directory to write")
    add_overwrite_argument(p)


def run(args: argparse.Namespace) -> int:
    from smiling_ros.io.importer import check_out_dir
    from smiling_ros.io.lerobot import import_lerobot
    from smiling_ros.io.outputs import prepare_output

    with prepare_output(args.out, "dir", overwrite=args.overwrite) as out:
        check_out_dir(out.path)
        ds = import_lerobot(args.src, out.path)
    act = f"act_dim {ds.act_dim}" if ds.act is not None else "no actions (state-only)"
    print(f"imported {args.src}: {ds.num_episodes} episodes, {len(ds.obs)} steps at {ds.meta['rate_hz']:g} Hz, "
          f"obs_dim {ds.obs_dim}, {act} -> {args.out}")
    return 0
