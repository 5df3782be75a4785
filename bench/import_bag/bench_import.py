"""Time `smiling-ros import-bag` on a 100k-message recording (MCAP and sqlite3).

The bag is what `ros2 bag record` writes for an arm: /joint_states (JointState, 3 joints, 500 Hz),
/ee_pose (PoseStamped, 100 Hz), /observation (Float64MultiArray, 50 Hz) and the command topic
(Float64MultiArray, 50 Hz), in episodes of 20 s separated by 1.5 s pauses, no markers. The
config maps joint positions/velocities by name, the pose (position + euler) and 2 elements of
/observation (12 dims), and the command (2 dims). Resampled to 20 Hz.

Usage: python bench/import_bag/bench_import.py [--messages 100000] [--repeats 3] [--out bench/import_bag/out]
Prints one line per storage (median seconds, messages/s) and writes OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "test"))


def make_bag(path: Path, storage: str, n_messages: int) -> dict:
    from badbags import Rates, demo_bag

    rates = Rates(joint_states=500.0, ee_pose=100.0, observation=50.0, command=50.0)
    per_s = rates.joint_states + rates.ee_pose + rates.observation + rates.command
    seconds = 20.0
    episodes = max(1, round(n_messages / (per_s * seconds)))
    seconds = n_messages / (per_s * episodes)
    t = time.perf_counter()
    info = demo_bag(path, storage, episodes=episodes, seconds=seconds, pause_s=1.5, rates=rates)
    return {"episodes": episodes, "messages": len(info["messages"]), "write_s": time.perf_counter() - t}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(REPO / "bench/import_bag/out"))
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    from badbags import write_config

    from smiling_ros.config import load_config
    from smiling_ros.io.importer import import_bag

    out = Path(a.out)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    cfg_path = write_config(work / "cfg.yaml", rate_hz=20.0, gap_s=0.5, min_steps=5)
    cfg = load_config(cfg_path)
    results = {
        "machine": f"{platform.machine()} {platform.processor() or ''} cpus={__import__('os').cpu_count()}".strip(),
        "python": platform.python_version(),
        "repeats": a.repeats,
        "storages": {},
    }
    for storage in ("mcap", "sqlite3"):
        bag = work / f"bag_{storage}"
        info = make_bag(bag, storage, a.messages)
        times, cpu = [], []
        ds = None
        for r in range(a.repeats):
            dst = work / f"ds_{storage}"
            shutil.rmtree(dst, ignore_errors=True)
            t, c = time.perf_counter(), time.process_time()
            ds = import_bag(bag, cfg, dst, progress=False, log=lambda s: None)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        # the whole command as a user runs it (interpreter start and imports included)
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "smiling_ros.cli", "import-bag", str(bag), "--config", str(cfg_path),
             "--out", str(work / f"cli_{storage}"), "--no-progress"],
            capture_output=True, text=True,
        )
        cli_s = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(proc.stderr)
        med = statistics.median(times)
        entry = {
            "bag_messages": info["messages"],
            "bag_episodes": info["episodes"],
            "bag_bytes": sum(f.stat().st_size for f in bag.iterdir()),
            "write_s": round(info["write_s"], 3),
            "import_s": [round(x, 3) for x in times],
            "import_median_s": round(med, 3),
            "import_cpu_median_s": round(statistics.median(cpu), 3),
            "load_average_1min": round(__import__("os").getloadavg()[0], 2),
            "messages_per_s": round(info["messages"] / med),
            "cli_wall_s": round(cli_s, 3),
            "dataset_steps": int(len(ds.obs)),
            "dataset_episodes": ds.num_episodes,
            "obs_dim": ds.obs_dim,
            "act_dim": ds.act_dim,
        }
        results["storages"][storage] = entry
        print(
            f"import-bag {storage:7s}: {info['messages']} messages ({entry['bag_bytes'] / 1e6:.1f} MB) -> "
            f"{entry['dataset_episodes']} episodes, {entry['dataset_steps']} steps: median {med:.2f} s wall, "
            f"{entry['import_cpu_median_s']:.2f} s CPU over {a.repeats} runs ({entry['messages_per_s']} msg/s); "
            f"CLI wall {cli_s:.2f} s (load average {entry['load_average_1min']})"
        )
    (out / "results.json").write_text(json.dumps(results, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {out / 'results.json'}")


if __name__ == "__main__":
    main()
