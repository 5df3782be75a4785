"""`smiling-ros record-demos`: expert demonstrations over ROS 2 into a rosbag2.

Starts two real ROS 2 processes, ``sim_node`` (realtime mode, the expert driving the task and
publishing its commands) and ``recorder_node`` (the configured topics into the bag), on a DDS
domain of their own (a free ``ROS_DOMAIN_ID`` unless the environment sets one; loopback only
unless the user chose otherwise), follows the recorder's episode markers with a progress bar,
stops both after N episodes and checks that the bag reads back with N episodes.

The simulation may run faster than real time (``--time-scale``): sim_node then publishes /clock
and the recorder stamps the bag in simulated time, so the bag looks as if recorded in real time
at ``rate_hz``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from smiling_ros.errors import UserError
from smiling_ros.ros.processes import Child


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="task config (YAML path or shipped name, e.g. arm_reach)")
    p.add_argument("--episodes", type=int, default=10, help="number of episodes to record (default 10)")
    p.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    p.add_argument("--expert", default="scripted",
                   help="'scripted' (the task's scripted expert) or a policy checkpoint path (default scripted)")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default=None, help="bag storage (default: config record.storage)")
    p.add_argument("--time-scale", type=float, default=10.0,
                   help="simulated seconds per wall second (default 10; 1 = real time)")
    p.add_argument("--seed", type=int, default=None, help="env/expert seed (default: config seed)")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (default: generous)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from smiling_ros.io.outputs import add_overwrite_argument

    add_overwrite_argument(p)


def summarize_bag(path: Path, marker_topic: str) -> dict[str, Any]:
    """Read a bag back: message counts per topic and the episode markers (UserError if unreadable)."""
    from rosbags.highlevel import AnyReader

    from smiling_ros.data.episodes import parse_marker_text
    from smiling_ros.io.bag import typestore

    try:
        with AnyReader([Path(path)], default_typestore=typestore()) as reader:
            counts = {c.topic: 0 for c in reader.connections}
            markers = []
            for conn, _, raw in reader.messages():
                counts[conn.topic] += 1
                if conn.topic == marker_topic:
                    m = parse_marker_text(getattr(reader.deserialize(raw, conn.msgtype), "data", ""))
                    if m is not None:
                        markers.append(m)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the bag is not usable
        raise UserError(f"{path}: recorded bag does not read back ({type(exc).__name__}: {exc})") from None
    ends = [m for m in markers if isinstance(m, dict) and m.get("event") == "end"]
    return {"counts": counts, "episodes": len(ends), "successes": sum(bool(m.get("success")) for m in ends)}


def _discard_or_keep(out: Path, marker_topic: str) -> str:
    """After a failed run: remove a bag this run created that holds no complete episode; keep
    one that does (never lose recorded data). Returns what was done, for the error line."""
    import shutil

    if not out.exists():
        return "no bag written"
    try:
        episodes = summarize_bag(out, marker_topic)["episodes"]
    except UserError:
        episodes = 0
    if episodes == 0:
        shutil.rmtree(out, ignore_errors=True)
        return "the empty bag was removed"
    return f"partial bag with {episodes} complete episodes kept at {out}"


def run(args: argparse.Namespace) -> int:
    from smiling_ros.config import load_config
    from smiling_ros.ros.dds_env import ros_available

    if args.episodes < 1:
        raise UserError(f"--episodes must be >= 1, got {args.episodes}")
    if not args.time_scale > 0:
        raise UserError(f"--time-scale must be > 0, got {args.time_scale}")
    cfg = load_config(args.config)
    if not cfg.task.env:
        raise UserError(f"{cfg.path}: task.env is empty: record-demos needs a simulated task")
    from smiling_ros.envs import make_env_from_config, scripted_expert

    env = make_env_from_config(cfg)  # fail here, with one line, on a bad env id
    if args.expert == "scripted" and scripted_expert(env) is None:
        raise UserError(f"--expert scripted: task '{cfg.task.env}' has no scripted expert (give a policy checkpoint)")
    if args.expert != "scripted" and not Path(args.expert).exists():
        raise UserError(f"--expert {args.expert}: checkpoint not found")
    horizon = (env.spec.max_episode_steps if env.spec is not None else None) or 1000
    env.close()
    if not ros_available():
        raise UserError("record-demos needs ROS 2 (rclpy): pip install 'smiling_ros[ros]' or source a ROS 2 install")
    from smiling_ros.io.outputs import prepare_output, require_name

    final = require_name(args.out).resolve()
    with prepare_output(final, "dir", args.overwrite) as output:
        if not output.existed:
            return _record(args, cfg, final, horizon)
        # --overwrite: record beside it, then the new bag replaces the old one (only a bag is replaced)
        foreign = sorted(p.name for p in final.iterdir()
                         if p.name != "metadata.yaml" and p.suffix not in (".mcap", ".db3"))
        if foreign:
            raise UserError(f"{final}: holds files that are not part of a bag ({', '.join(foreign[:3])}); "
                            "a bag replaces its directory as a whole: choose another --out")
        tmp = final.with_name(f".{final.name}.recording")
        if os.path.lexists(tmp):
            shutil.rmtree(tmp)  # a recording of ours killed before it replaced the bag
        try:
            rc = _record(args, cfg, tmp, horizon)
            old = final.with_name(f".{final.name}.old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            return rc
        finally:
            if os.path.lexists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)


def _record(args, cfg, out: Path, horizon: int) -> int:
    from smiling_ros.ros.dds_env import child_env, free_domain_id


    domain = os.environ.get("ROS_DOMAIN_ID") or str(free_domain_id())
    env_vars = child_env(int(domain))
    storage = args.storage or cfg.record.storage
    expert = args.expert if args.expert == "scripted" else str(Path(args.expert).resolve())
    n = args.episodes
    episode_s = horizon / cfg.rate_hz / args.time_scale
    timeout = args.timeout or (60.0 + 3.0 * n * episode_s)

    from tqdm import tqdm

    bar = tqdm(total=n, unit="ep", desc="record-demos", disable=args.quiet, file=sys.stderr)
    results: list[bool] = []

    def on_recorder_line(line: str) -> None:
        if not line.startswith("EPISODE "):
            return
        try:
            marker = json.loads(line[len("EPISODE "):])
        except ValueError:
            return
        if marker.get("event") == "end" and len(results) < n:
            results.append(bool(marker.get("success")))
            bar.update(1)
            bar.set_postfix(success=f"{sum(results)}/{len(results)}")

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smiling_ros_record_") as tmp:
        log_dir = Path(tmp)
        recorder = Child("recorder_node", "smiling_ros.nodes.recorder_node", {
            "config": cfg.path, "output": str(out), "storage": storage, "max_episodes": n,
            "use_sim_time": True}, env_vars, log_dir, on_recorder_line)
        sim = Child("sim_node", "smiling_ros.nodes.sim_node", {
            "config": cfg.path, "mode": "realtime", "expert": expert, "time_scale": float(args.time_scale),
            "publish_clock": True, "max_episodes": n, "wait_for_subscribers": 1,
            **({"seed": args.seed} if args.seed is not None else {})}, env_vars, log_dir)
        children = [recorder, sim]
        try:
            while True:
                rc_rec, rc_sim = recorder.poll(), sim.poll()
                if rc_rec is not None:
                    break
                if rc_sim not in (None, 0):
                    raise UserError(f"sim_node exited with status {rc_sim}: {sim.last_error()}")
                if time.monotonic() - t0 > timeout:
                    raise UserError(f"timed out after {timeout:.0f} s with {len(results)}/{n} episodes recorded "
                                    f"(ROS_DOMAIN_ID={domain}; is DDS blocked on loopback?)")
                time.sleep(0.1)
            if rc_rec != 0:
                raise UserError(f"recorder_node exited with status {rc_rec}: {recorder.last_error()}")
        except UserError as exc:
            for child in children:
                child.stop()
            raise UserError(f"{exc}; {_discard_or_keep(out, cfg.topics.episode)}") from None
        finally:
            for child in children:
                child.stop()
            bar.close()
        summary_line = next((ln for ln in recorder.lines if ln.startswith("RECORDED ")), None)
    if summary_line is None:
        raise UserError(f"{out}: the recorder did not report a closed bag")
    summary = summarize_bag(out, cfg.topics.episode)
    if summary["episodes"] < n:
        raise UserError(f"{out}: bag holds {summary['episodes']} complete episodes, expected {n}")
    lost = json.loads(summary_line[len("RECORDED "):]).get("lost", {})
    wall = time.monotonic() - t0
    print(f"recorded {summary['episodes']} episodes ({summary['successes']} successful) to {out} "
          f"[{storage}, {wall:.1f} s, ROS_DOMAIN_ID={domain}]")
    for topic, count in sorted(summary["counts"].items()):
        extra = f" (lost {lost[topic]})" if lost.get(topic) else ""
        print(f"  {topic}: {count} messages{extra}")
    return 0
