"""`smiling-ros import-bag BAG --config CFG --out DIR`: any rosbag2 recording -> a dataset.

BAG is a rosbag2 directory (metadata.yaml + .mcap/.db3 files), a bare .mcap or .db3 file, or the
directory of a recording killed before it wrote metadata.yaml. The config's observation/action
fields say which topics and fields become the vectors; see smiling_ros/io/importer.py for the
resampling and smiling_ros/data/episodes.py for the episode rules. Prints one line per episode
with the rules that cut it, the data checks' warnings, and a summary line.
"""
from __future__ import annotations

import argparse
import math

from smiling_ros.errors import UserError

SHOWN = 20  # episodes listed one per line


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bag", metavar="BAG", help="rosbag2 directory, .mcap or .db3 file")
    p.add_argument("--config", required=True, help="task config (YAML path or shipped name, e.g. arm_reach)")
    p.add_argument("--out", required=True, help="dataset directory to write (replaced atomically)")
    p.add_argument("--rate", default=None, metavar="HZ", help="dataset rate in Hz (default: config rate_hz)")
    p.add_argument(
        "--gap", default=None, metavar="S", help="split episodes at state gaps longer than S seconds "
        "(default: config import.gap_s)"
    )
    p.add_argument("--require-actions", action="store_true", help="fail if the bag has no action topics")
    p.add_argument("--salvage", action="store_true", help="read the complete part of a truncated MCAP")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    from smiling_ros.io.outputs import add_overwrite_argument

    add_overwrite_argument(p)


def _number(text, flag: str):
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{flag}: expected a number, got '{text}'") from None
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{flag}: must be a positive number, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    rate = _number(args.rate, "--rate")
    gap = _number(args.gap, "--gap")
    from smiling_ros.config import load_config
    from smiling_ros.io.importer import import_bag
    from smiling_ros.io.outputs import prepare_output

    cfg = load_config(args.config)
    with prepare_output(args.out, "dir", args.overwrite) as out:
        return _import(args, cfg, out.path, rate, gap, import_bag)


def _import(args, cfg, out, rate, gap, import_bag) -> int:
    ds = import_bag(
        args.bag,
        cfg,
        out,
        rate_hz=rate,
        gap_s=gap,
        progress=not args.no_progress,
        require_actions=args.require_actions,
        salvage=args.salvage,
    )
    info = ds.meta["import"]
    rate = ds.meta["rate_hz"]
    episodes = ds.meta["episodes"]
    for i, ep in enumerate(episodes[:SHOWN] if len(episodes) > SHOWN + 1 else episodes):
        cut = ", ".join(ep["cut_by"]) or "the whole recording"
        print(f"episode {i}: {ep['steps']} steps ({(ep['steps'] - 1) / rate:.1f} s), cut by {cut}")
    if len(episodes) > SHOWN + 1:
        print(f"... {len(episodes) - SHOWN} more episodes (meta.json 'episodes')")
    by_rule: dict[str, int] = {}
    for ep in ds.meta["episodes"]:
        for r in ep["cut_by"] or ["none"]:
            by_rule[r] = by_rule.get(r, 0) + 1
    lengths = ds.meta["episode_lengths"]
    act = f"act_dim {ds.act_dim}" if ds.act is not None else "no actions (state-only)"
    print(
        f"imported {args.bag} ({ds.meta['source']['storage']}, episodes from {ds.meta['episodes_from']}; "
        f"cut by {', '.join(f'{r} {n}' for r, n in by_rule.items())}): "
        f"{ds.num_episodes} episodes ({info['dropped']} dropped), {len(ds.obs)} steps at {ds.meta['rate_hz']:g} Hz "
        f"(episode length {min(lengths)}-{max(lengths)}), obs_dim {ds.obs_dim}, {act}, "
        f"{info['messages']} messages in {info['seconds']:.2f} s -> {args.out}"
    )
    return 0
