"""`smiling-ros demo`: the main job, end to end, on the embedded default task.

1. record expert demonstrations over ROS 2 (sim_node + scripted expert + recorder_node -> MCAP)
2. import the bag into a dataset (the same path as any `ros2 bag record` bag)
3. train SMILING (state-only demonstrations, SAC on the diffusion-score cost)
4. train the BC baseline (state-action)
5. train BRIDGER with the SMILING policy as its source
6. deploy controller_node (BRIDGER) against sim_node in real time over DDS; success from the
   robot's own episode markers, recorded to a bag
7. evaluate random, BC, SMILING, BRIDGER and the expert in MuJoCo: a table, results.json and
   a PNG (learning curve + results) in the run directory

Every stage is the CLI verb a user would run, executed as a child process and printed, so the
run directory can be reproduced or continued by hand.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from smiling_ros.errors import UserError

# env steps / gradient steps per budget; 'default' fits ~10 min on a 2-core CPU.
BUDGETS: dict[str, dict[str, int]] = {
    "quick": {"episodes": 10, "smiling_steps": 6000, "bc_steps": 1000, "bridger_steps": 1000, "eval": 10, "deploy": 5},
    "default": {"episodes": 20, "smiling_steps": 12000, "bc_steps": 3000, "bridger_steps": 3000, "eval": 20,
                "deploy": 10},
    "long": {"episodes": 50, "smiling_steps": 60000, "bc_steps": 10000, "bridger_steps": 10000, "eval": 50,
             "deploy": 20},
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="arm_reach", help="task config (default: the own arm task)")
    p.add_argument("--out", default=None, help="run directory (default runs/demo-<time>)")
    p.add_argument("--budget", choices=sorted(BUDGETS), default="default", help="training budget")
    p.add_argument("--smiling-steps", type=int, default=None, help="override SMILING env steps")
    p.add_argument("--episodes", type=int, default=None, help="override number of demonstrations")
    p.add_argument("--expert", default=None,
                   help="expert for tasks without a scripted one (policy checkpoint, e.g. from train-expert)")
    p.add_argument("--time-scale", type=float, default=5.0,
                   help="simulated seconds per wall second for recording and deployment (default 5)")
    p.add_argument("--skip-deploy", action="store_true", help="no closed-loop stage over ROS 2")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    from smiling_ros.io.outputs import add_overwrite_argument

    add_overwrite_argument(p)


def _stage(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def _cli(*args: Any) -> None:
    """Run one smiling-ros verb as a child process; its one-line error becomes ours."""
    argv = [str(a) for a in args]
    print("$ smiling-ros " + " ".join(shlex.quote(a) for a in argv), flush=True)
    r = subprocess.run([sys.executable, "-m", "smiling_ros.cli", *argv], stderr=subprocess.PIPE, text=True)
    if r.stderr:
        sys.stderr.write(r.stderr)
    if r.returncode != 0:
        last = [ln for ln in r.stderr.splitlines() if ln.strip()]
        raise UserError(f"stage '{argv[0]}' failed: {last[-1] if last else f'exit status {r.returncode}'}")


def deploy(cfg, checkpoint: Path, episodes: int, time_scale: float, out_bag: Path, seed: int) -> dict[str, Any]:
    """controller_node driving sim_node in real time over DDS, recorded by recorder_node.

    Returns the robot-side episode outcomes (from sim_node's episode markers)."""
    import tempfile

    from smiling_ros.ros.dds_env import child_env, free_domain_id
    from smiling_ros.ros.processes import Child

    domain = int(os.environ.get("ROS_DOMAIN_ID") or free_domain_id())
    env = child_env(domain)
    ends: list[dict] = []

    def on_line(line: str) -> None:
        if line.startswith("EPISODE "):
            try:
                m = json.loads(line[len("EPISODE "):])
            except ValueError:
                return
            if m.get("event") == "end":
                ends.append(m)
                print(f"  episode {len(ends)}/{episodes}: {'success' if m.get('success') else 'failure'}"
                      f" (return {m.get('return', float('nan')):.1f})", flush=True)

    rate = cfg.rate_hz * time_scale
    horizon = cfg.task.max_episode_steps or 1000
    timeout = 60 + 3 * episodes * horizon / rate
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="smiling_ros_deploy_") as tmp:
        logs = Path(tmp)
        children: list = []
        try:
            recorder = Child("recorder_node", "smiling_ros.nodes.recorder_node", {
                "config": cfg.path, "output": str(out_bag), "max_episodes": episodes, "use_sim_time": True},
                env, logs, on_line)
            children.append(recorder)
            controller = Child("controller_node", "smiling_ros.nodes.controller_node", {
                "config": cfg.path, "checkpoint": str(checkpoint), "control_rate_hz": rate,
                # the simulator runs time_scale times faster: one policy step is still one training step
                "allow_rate_mismatch": time_scale != 1.0,
                "follow_announcements": False}, env, logs)
            children.append(controller)
            # The robot starts its first episode only once the controller is commanding.
            while "active: commanding" not in controller.log_path.read_text():
                rc = controller.poll()
                if rc is not None:
                    raise UserError(f"controller_node exited with status {rc}: {controller.last_error()}")
                if time.monotonic() - t0 > 120:
                    raise UserError("controller_node did not activate within 120 s")
                time.sleep(0.1)
            sim = Child("sim_node", "smiling_ros.nodes.sim_node", {
                "config": cfg.path, "mode": "realtime", "time_scale": time_scale, "publish_clock": True,
                "max_episodes": episodes, "wait_for_subscribers": 1, "seed": seed}, env, logs)
            children.append(sim)
            while recorder.poll() is None:
                for c in (controller, sim):
                    rc = c.poll()
                    if rc not in (None, 0):
                        raise UserError(f"{c.name} exited with status {rc}: {c.last_error()}")
                if time.monotonic() - t0 > timeout:
                    raise UserError(f"deployment timed out after {timeout:.0f} s ({len(ends)}/{episodes} episodes; "
                                    f"ROS_DOMAIN_ID={domain})")
                time.sleep(0.1)
        finally:
            for c in children:
                c.stop()
    succ = [bool(m.get("success")) for m in ends[:episodes]]
    return {
        "episodes": len(succ),
        "success_rate": sum(succ) / len(succ) if succ else None,
        "mean_return": sum(float(m.get("return", 0.0)) for m in ends[:episodes]) / max(len(succ), 1),
        "control_rate_hz": rate,
        "time_scale": time_scale,
        "wall_s": time.monotonic() - t0,
    }


def run(args: argparse.Namespace) -> int:
    held: list = []
    try:
        return _run(args, held)
    finally:
        for output in held:
            output.close()


def _run(args: argparse.Namespace, held: list) -> int:
    from smiling_ros.config import load_config
    from smiling_ros.ros.dds_env import ensure_local_dds, ros_available

    ensure_local_dds()
    cfg = load_config(args.config)
    budget = dict(BUDGETS[args.budget])
    if args.smiling_steps:
        budget["smiling_steps"] = args.smiling_steps
    if args.episodes:
        budget["episodes"] = args.episodes
    if args.expert:  # check the expert before anything is written or started
        from smiling_ros.data.evaluation import resolve_policy
        from smiling_ros.envs import make_env_from_config

        env = make_env_from_config(cfg)
        try:
            resolve_policy(args.expert, env)
        finally:
            env.close()
    elif not cfg.task.env:
        raise UserError(f"{cfg.path}: task.env is empty: the demo needs a simulated task")
    else:
        from smiling_ros.envs import make_env_from_config, scripted_expert

        env = make_env_from_config(cfg)
        has_expert = scripted_expert(env) is not None
        env.close()
        if not has_expert:
            raise UserError(f"task '{cfg.task.env}' has no scripted expert: pass --expert CKPT "
                            f"(e.g. from 'smiling-ros train-expert --config {args.config}')")
    out = Path(args.out or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    from smiling_ros.io.outputs import prepare_output

    output = prepare_output(out, "dir", args.overwrite)
    held.append(output)
    output.ensure_dir()
    has_ros = ros_available()
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    print(f"smiling-ros demo: task {cfg.task.env} ({cfg.path}), budget '{args.budget}', run directory {out}")
    if not has_ros:
        print("note: rclpy not found: recording over ROS 2 is replaced by an in-process rollout and the "
              "closed-loop stage is skipped (pip install 'smiling_ros[ros]' for the full demo)")

    def timed(name, fn):
        t = time.monotonic()
        fn()
        timings[name] = time.monotonic() - t

    expert = args.expert or "scripted"
    bag, data = out / "demos", out / "dataset"
    if has_ros:
        _stage(f"1/7 record {budget['episodes']} expert demonstrations over ROS 2 (sim_node + recorder_node)")
        timed("record", lambda: _cli("record-demos", "--config", cfg.path, "--episodes", budget["episodes"],
                                      "--out", bag, "--expert", expert, "--time-scale", args.time_scale,
                                      "--seed", cfg.seed + 1000))
        _stage("2/7 import the bag into a dataset")
        timed("import", lambda: _cli("import-bag", bag, "--config", cfg.path, "--out", data))
    else:
        _stage(f"1-2/7 roll out {budget['episodes']} expert demonstrations in-process")
        timed("record", lambda: _cli("rollout", "--config", cfg.path, "--policy", expert,
                                      "--episodes", budget["episodes"], "--out", data, "--seed", cfg.seed + 1000))

    _stage(f"3/7 train SMILING from state-only demonstrations ({budget['smiling_steps']} env steps)")
    smiling_dir = out / "smiling"
    timed("smiling", lambda: _cli("train-smiling", "--config", cfg.path, "--dataset", data, "--out", smiling_dir,
                                   "--steps", budget["smiling_steps"], "--device", args.device))
    smiling_ckpt = smiling_dir / "policy.safetensors"

    _stage(f"4/7 train the BC baseline ({budget['bc_steps']} gradient steps)")
    bc_dir = out / "bc"
    timed("bc", lambda: _cli("train-bc", "--config", cfg.path, "--dataset", data, "--out", bc_dir,
                              "--steps", budget["bc_steps"], "--device", args.device))
    bc_ckpt = bc_dir / "policy.safetensors"

    _stage(f"5/7 train BRIDGER with the SMILING policy as source ({budget['bridger_steps']} gradient steps)")
    bridger_ckpt = out / "bridger.safetensors"
    timed("bridger", lambda: _cli("train-bridger", "--config", cfg.path, "--dataset", data, "--source", smiling_ckpt,
                                   "--out", bridger_ckpt, "--train-steps", budget["bridger_steps"],
                                   "--eval-episodes", 0, "--device", args.device))

    closed_loop = None
    if has_ros and not args.skip_deploy:
        _stage(f"6/7 deploy: controller_node (BRIDGER) drives sim_node over DDS for {budget['deploy']} episodes")
        t = time.monotonic()
        closed_loop = deploy(cfg, bridger_ckpt, budget["deploy"], args.time_scale, out / "deploy_bag", cfg.seed + 2000)
        timings["deploy"] = time.monotonic() - t
    else:
        _stage("6/7 deploy: skipped")

    _stage(f"7/7 evaluate in MuJoCo ({budget['eval']} episodes each)")
    t = time.monotonic()
    results = evaluate_all(cfg, {"random": "random", "BC": bc_ckpt, "SMILING": smiling_ckpt,
                                 "BRIDGER": bridger_ckpt, "expert": expert}, budget["eval"], smiling_dir)
    timings["eval"] = time.monotonic() - t
    timings["total"] = time.monotonic() - t_start
    summary = {"task": cfg.task.env, "config": cfg.path, "budget": budget, "results": results,
               "closed_loop": closed_loop, "timings_s": timings}
    from smiling_ros.learn.checkpoint import atomic_write_text

    atomic_write_text(out / "results.json", json.dumps(summary, indent=1))
    png = plot(out, results, smiling_dir)
    print_table(results, closed_loop)
    print(f"\nrun directory: {out}\n  results.json, {png.name}, bridger.safetensors (deploy with controller_node), "
          f"demos/ (bag), dataset/\n  total {timings['total'] / 60:.1f} min")
    return 0


def evaluate_all(cfg, policies: dict[str, Any], episodes: int, smiling_dir: Path) -> dict[str, dict]:
    import torch

    from smiling_ros.data.evaluation import evaluate
    from smiling_ros.envs import make_env_from_config

    torch.set_num_threads(1)
    references = None
    ref_file = smiling_dir / "references.json"
    if ref_file.exists():
        references = json.loads(ref_file.read_text())
    seed = cfg.seed + 5000  # episodes unseen in training and demonstrations
    out = {}
    for name, spec in policies.items():
        r = evaluate(spec, lambda: make_env_from_config(cfg), episodes=episodes, seed=seed, references=references)
        out[name] = {k: r[k] for k in ("mean_return", "std_return", "success_rate", "normalized_return")}
        if references is None and name == "random":
            references = {"random": r["mean_return"]}
    if references is not None and "expert" not in references:
        references["expert"] = out["expert"]["mean_return"]
    from smiling_ros.data.evaluation import normalized_return

    for r in out.values():
        if r["normalized_return"] is None:
            r["normalized_return"] = normalized_return(r["mean_return"], references)
    return out


def print_table(results: dict[str, dict], closed_loop) -> None:
    def fmt(v, pct=False):
        if v is None:
            return "-"
        return f"{100 * v:.0f}%" if pct else f"{v:.2f}"

    print("\npolicy      success   normalised return   return")
    for name, r in results.items():
        print(f"{name:<11} {fmt(r['success_rate'], True):>7}   {fmt(r['normalized_return']):>17}   "
              f"{r['mean_return']:.1f} ± {r['std_return']:.1f}")
    if closed_loop:
        print(f"BRIDGER over ROS 2 (controller_node -> sim_node, {closed_loop['control_rate_hz']:.0f} Hz): "
              f"success {fmt(closed_loop['success_rate'], True)} over {closed_loop['episodes']} episodes")


def plot(out: Path, results: dict[str, dict], smiling_dir: Path) -> Path:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    eval_csv = smiling_dir / "eval.csv"
    if eval_csv.exists():
        rows = list(csv.DictReader(eval_csv.open()))
        key = "normalized_return" if rows and rows[0].get("normalized_return") not in (None, "") else "mean_return"
        xs = [float(r["step"]) for r in rows if r.get(key) not in (None, "")]
        ys = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
        ax1.plot(xs, ys, marker="o", label="SMILING")
        ax1.set_xlabel("env steps")
        ax1.set_ylabel(key.replace("_", " "))
        ax1.set_title("SMILING learning curve")
        ax1.grid(alpha=0.3)
    names = list(results)
    vals = [results[n]["success_rate"] if results[n]["success_rate"] is not None else results[n]["normalized_return"]
            for n in names]
    ax2.bar(names, [v or 0.0 for v in vals], color=["#999", "#69c", "#c63", "#3a6", "#333"][: len(names)])
    ax2.set_ylabel("success rate" if results[names[0]]["success_rate"] is not None else "normalised return")
    ax2.set_title("evaluation")
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
