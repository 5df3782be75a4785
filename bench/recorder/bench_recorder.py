"""Recorder throughput: JointState published at a fixed rate by one process, recorded by
recorder_node in another, counted in the bag.

    python bench/recorder/bench_recorder.py                      # 1, 2, 5, 10 kHz, 5 s each
    python bench/recorder/bench_recorder.py --rates 1000 --seconds 10 --storage sqlite3

For each rate: a publisher process (rclpy, sensor_msgs/JointState with 7 joints, QoS reliable
keep-last ``--depth`` (10, as ros2_control's joint_state_broadcaster offers), position[0] = sequence
number) waits until the recorder has subscribed, publishes ``rate x seconds`` messages paced
on absolute deadlines, and reports the rate it achieved. The recorder is stopped with SIGINT; the
bag is read back with rosbags and the sequence numbers checked. Loss = published - in bag.
Writes results.json beside this script (or --out) and prints a table. Nothing here asserts.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TOPIC = "/bench/joint_states"


def publisher(rate: float, count: int, depth: int) -> None:
    """Child process: publish ``count`` JointState messages at ``rate`` Hz once a subscriber matched."""
    import rclpy
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    rclpy.init()
    node = rclpy.create_node("bench_joint_state_publisher")
    qos = QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    pub = node.create_publisher(JointState, TOPIC, qos)
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    msg = JointState()
    msg.name = [f"joint{i}" for i in range(7)]
    position = [0.0] * 7
    msg.velocity = [0.1] * 7
    msg.effort = [0.0] * 7
    period = 1.0 / rate
    t0 = time.perf_counter()
    for seq in range(count):
        target = t0 + seq * period
        while True:
            now = time.perf_counter()
            if now >= target:
                break
            if target - now > 0.002:
                time.sleep(target - now - 0.001)
        position[0] = float(seq)
        msg.position = position
        ns = time.time_ns()
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 1_000_000_000)
        pub.publish(msg)
    elapsed = time.perf_counter() - t0
    pub.wait_for_all_acked(rclpy.duration.Duration(seconds=5.0))
    print(json.dumps({"published": count, "publish_s": elapsed, "achieved_hz": count / elapsed}), flush=True)
    node.destroy_node()
    rclpy.shutdown()


def bag_sequence(path: Path) -> list[int]:
    from rosbags.highlevel import AnyReader

    from smiling_ros.io.bag import typestore

    seqs = []
    with AnyReader([path], default_typestore=typestore()) as reader:
        for conn, _, raw in reader.messages():
            if conn.topic == TOPIC:
                seqs.append(int(reader.deserialize(raw, conn.msgtype).position[0]))
    return seqs


def run_one(rate: float, seconds: float, depth: int, storage: str, workdir: Path, env: dict) -> dict:
    count = int(rate * seconds)
    bag = workdir / f"bag_{int(rate)}_{storage}"
    rec_err = open(workdir / f"recorder_{int(rate)}.err", "w")
    recorder = subprocess.Popen(
        [sys.executable, "-m", "smiling_ros.nodes.recorder_node", "--ros-args", "-p", "config:=arm_reach",
         "-p", f"output:={bag}", "-p", f"storage:={storage}", "-p", f"topics:=['{TOPIC}']"],
        env=env, stdout=subprocess.PIPE, stderr=rec_err, text=True)
    pub = subprocess.run([sys.executable, __file__, "--publish", str(rate), str(count), str(depth)], env=env,
                         capture_output=True, text=True, timeout=seconds * 4 + 60)
    time.sleep(1.0)
    recorder.send_signal(signal.SIGINT)
    out, _ = recorder.communicate(timeout=60)
    rec_err.close()
    if pub.returncode != 0:
        raise RuntimeError(f"publisher failed: {pub.stderr[-2000:]}")
    pub_stats = json.loads(pub.stdout.strip().splitlines()[-1])
    summary = json.loads(next(ln for ln in out.splitlines() if ln.startswith("RECORDED "))[9:])
    seqs = bag_sequence(bag)
    in_bag = len(seqs)
    unique = len(set(seqs))
    return {
        "rate_hz": rate, "storage": storage, "publisher_depth": depth, "published": count,
        "achieved_publish_hz": round(pub_stats["achieved_hz"], 1), "in_bag": in_bag,
        "lost": count - unique, "duplicates": in_bag - unique, "in_order": seqs == sorted(seqs),
        "recorder_reported_lost": summary["lost"].get(TOPIC, 0),
        "zero_loss_msgs_per_s": round(pub_stats["achieved_hz"], 1) if count == unique else None,
    }


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        publisher(float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[1000, 2000, 5000, 10000])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--depth", type=int, default=10, help="publisher keep-last depth")
    ap.add_argument("--storage", default="mcap", choices=("mcap", "sqlite3"))
    ap.add_argument("--out", type=Path, default=HERE / "results.json")
    args = ap.parse_args()

    sys.path.insert(0, str(HERE.parent.parent))
    from smiling_ros.ros.dds_env import child_env, free_domain_id

    env = child_env(int(os.environ.get("ROS_DOMAIN_ID") or free_domain_id()))
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_recorder_") as tmp:
        for rate in args.rates:
            r = run_one(rate, args.seconds, args.depth, args.storage, Path(tmp), env)
            results.append(r)
            print(f"{r['rate_hz']:>8.0f} Hz  published {r['published']:>6}  achieved {r['achieved_publish_hz']:>8.1f} Hz"
                  f"  in bag {r['in_bag']:>6}  lost {r['lost']:>5}  in order {r['in_order']}", flush=True)
    best = max((r["zero_loss_msgs_per_s"] for r in results if r["zero_loss_msgs_per_s"]), default=None)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
        "python": platform.python_version(), "seconds_per_rate": args.seconds, "results": results,
        "max_zero_loss_msgs_per_s": best,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"highest rate recorded with zero loss: {best} msgs/s  ({args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
