"""`smiling-ros announce CKPT [--topic T] [--path-only] [--wait S]`: hand a policy checkpoint to
running controllers (hot swap), on this machine or another one.

By default the checkpoint's bytes go out on ``<topic>/checkpoint`` (transient local) with a JSON
announcement on ``<topic>``; a controller verifies size and SHA-256, stores its own copy and loads
that, so the file may be deleted (or live on another machine) once this command has announced it.
``--path-only`` announces the path (with its hash) for controllers sharing this disk. The command
stays until every matched controller acknowledged the transfer, or ``--wait`` seconds.
"""
from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="policy checkpoint (.safetensors)")
    p.add_argument("--topic", default="/smiling_ros/policy", help="policy announcement topic (config topics.policy)")
    p.add_argument("--path-only", action="store_true", help="announce the path only (controllers on this machine)")
    p.add_argument("--wait", type=float, default=10.0,
                   help="seconds to wait for a controller to match and acknowledge (default 10)")
    p.add_argument("--max-mb", type=float, default=256.0, help="refuse checkpoints larger than this (MB)")


def run(args) -> int:
    from smiling_ros.errors import UserError
    from smiling_ros.learn.checkpoint import load_checkpoint

    if not args.topic.startswith("/"):
        raise UserError(f"--topic: an absolute topic name, got '{args.topic}'")
    load_checkpoint(args.checkpoint)  # refuse what a controller would refuse, before sending it
    from smiling_ros.ros.transfer import announce_checkpoint

    header, matched = announce_checkpoint(args.checkpoint, args.topic, inline=not args.path_only,
                                          max_bytes=int(args.max_mb * 1e6), wait_s=args.wait)
    print(f"announced {header.name} ({header.size} bytes, sha256 {header.sha256}) on {args.topic}"
          + ("" if args.path_only else " with its bytes"), flush=True)
    if matched < 1:
        print(f"no controller subscribed to {args.topic} within {args.wait:g} s", flush=True)
    return 0
