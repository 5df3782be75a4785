"""Closed loop over ROS 2: controller_node driving sim_node in real time, at several control rates.

    python bench/closed_loop/run.py                       # 100, 250, 500 Hz, 60 s windows
    python bench/closed_loop/run.py --duration 10 --rates 100 500 --executor events

Three processes per rate: sim_node (own ArmReach task, realtime mode, its timer at the rate),
controller_node (a BRIDGER checkpoint, BRIDGER steps as in the checkpoint unless --steps) and
this script's monitor node, which counts what the robot side receives. After a warm-up the
controller's statistics are cleared (``~/reset_stats``); after the window its /diagnostics give:

- ticks, achieved rate (ticks over the window), missed deadlines (a tick that ended after the
  next one was due, or a timer slot skipped), ticks without a command (stale/invalid input);
- per-tick latency p50/p99/max: timer callback start to command published (observation
  assembly, source sample + N BRIDGER steps, clamp, publish);
- timer lateness p99: callback start after its scheduled time (executor jitter).

The monitor adds what the robot saw: commands/s received, observations/s the simulator
published, and the longest gap between two commands.

Default policy: a BRIDGER checkpoint (heuristic source, the config's architecture) trained
briefly here on scripted-expert demonstrations (runs/closed_loop/bridger.safetensors, reused
when present; node logs in runs/closed_loop/logs). Timing does not depend on how well it is
trained; pass --checkpoint to run a fully trained one. Writes bench/closed_loop/results.json
and prints a table.

On a machine shared with other work, ``--sched-priority 20`` runs the simulator, the controller
(its ``sched_priority`` parameter) and the monitor under SCHED_FIFO, as a robot's control
computer would; compare with the default (normal scheduling). ``--swap-every S`` announces a
checkpoint every S seconds during the window, to measure hot swaps under load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def train_policy(path: Path, train_steps: int) -> None:
    """A BRIDGER policy for ArmReach: heuristic source, 20 scripted-expert episodes."""
    import torch

    torch.set_num_threads(1)
    from smiling_ros.config import load_config
    from smiling_ros.envs import make_env_from_config, scripted_expert
    from smiling_ros.learn.common import collect_dataset
    from smiling_ros.methods.bridger.train import load_section, make_source, train_bridger

    cfg = load_config("arm_reach")
    env = make_env_from_config(cfg)
    expert = scripted_expert(env, seed=0)

    def act(o):
        return expert.act(o)

    ds = collect_dataset(env, act, episodes=20, seed=0, task=cfg.task.env)
    sec = load_section(cfg)
    sec.train_steps = train_steps
    src = make_source("heuristic", ds, cfg, sec, progress=False)
    low, high = env.action_space.low, env.action_space.high
    policy = train_bridger(ds, src, sec, low, high, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    policy.save(path)


class Monitor:
    """Counts commands and observations on the robot side; keeps the latest controller status."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Float64MultiArray, String
        from std_srvs.srv import Trigger

        from smiling_ros.ros.qos import COMMAND, EVENTS, SENSOR

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("closed_loop_monitor", context=self.ctx)
        self.lock = threading.Lock()
        self.cmd_times: list[int] = []
        self.obs_count = 0
        self.diag: list[tuple[float, dict]] = []
        self.node.create_subscription(Float64MultiArray, "/forward_command_controller/commands", self._on_cmd, COMMAND)
        self.node.create_subscription(Float64MultiArray, "/observation", self._on_obs, SENSOR)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.reset_client = self.node.create_client(Trigger, "/controller_node/reset_stats")
        self.policy_pub = self.node.create_publisher(String, "/smiling_ros/policy", EVENTS)
        self.String = String
        self.Trigger = Trigger
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.running = True
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while self.running:
            self.executor.spin_once(timeout_sec=0.05)

    def _on_cmd(self, msg):
        t = time.monotonic_ns()
        with self.lock:
            self.cmd_times.append(t)

    def _on_obs(self, msg):
        with self.lock:
            self.obs_count += 1

    def _on_diag(self, msg):
        for s in msg.status:
            if s.name.startswith("controller_node"):
                with self.lock:
                    self.diag.append((time.monotonic(), {kv.key: kv.value for kv in s.values}))

    def reset_stats(self, timeout: float = 10.0) -> bool:
        if not self.reset_client.wait_for_service(timeout_sec=timeout):
            return False
        fut = self.reset_client.call_async(self.Trigger.Request())
        deadline = time.monotonic() + timeout
        while not fut.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        return bool(fut.done() and fut.result().success)

    def close(self):
        self.running = False
        self.thread.join(2)
        self.node.destroy_node()
        self.ctx.try_shutdown()


def stop(proc: subprocess.Popen, timeout: float = 15) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def run_rate(rate: float, args, ckpt: Path, env: dict, logdir: Path) -> dict:
    swap_paths = [ckpt, logdir.parent / "swap_copy.safetensors"]
    if args.swap_every > 0:
        import shutil

        shutil.copyfile(ckpt, swap_paths[1])
    ros = [sys.executable, "-m"]
    rt = ["chrt", "-f", str(args.sched_priority)] if args.sched_priority else []
    sim = subprocess.Popen(
        rt + ros + ["smiling_ros.nodes.sim_node", "--ros-args", "-p", "config:=arm_reach", "-p", "mode:=realtime",
               "-p", f"rate_hz:={rate}", "-p", "seed:=0"],
        env=env, stdout=open(logdir / f"sim_{rate:g}.log", "w"), stderr=subprocess.STDOUT)
    # watchdog_periods is a safety setting: it goes into a copy of the robot config, not a parameter.
    # The sim steps at the control rate, so a policy trained at 20 Hz runs at `rate` on purpose.
    import yaml

    from smiling_ros.config import resolve_config_path

    robot = yaml.safe_load(resolve_config_path("arm_reach").read_text())
    robot["controller"]["watchdog_periods"] = args.watchdog_periods
    (logdir / "robot.yaml").write_text(yaml.safe_dump(robot))
    ctl_params = [f"config:={logdir / 'robot.yaml'}", f"checkpoint:={ckpt}", f"control_rate_hz:={rate}",
                  "allow_rate_mismatch:=true", "diagnostics_period_s:=0.5", f"executor:={args.executor}",
                  f"sched_priority:={args.sched_priority}"]
    if args.steps:
        ctl_params.append(f"steps:={args.steps}")
    ctl = subprocess.Popen(ros + ["smiling_ros.nodes.controller_node", "--ros-args"]
                           + sum((["-p", p] for p in ctl_params), []),
                           env=env, stdout=open(logdir / f"controller_{rate:g}.log", "w"), stderr=subprocess.STDOUT)
    mon = Monitor()
    try:
        deadline = time.monotonic() + 60
        while len(mon.cmd_times) < 10:
            if time.monotonic() > deadline or ctl.poll() is not None or sim.poll() is not None:
                raise RuntimeError(f"{rate:g} Hz: no commands; see {logdir}")
            time.sleep(0.05)
        time.sleep(args.warmup)
        if not mon.reset_stats():
            raise RuntimeError("controller_node ~/reset_stats did not answer")
        with mon.lock:
            t0, n_cmd0, n_obs0 = time.monotonic_ns(), len(mon.cmd_times), mon.obs_count
        if args.swap_every > 0:  # hot swaps during the window, alternating between two copies
            swaps, t_next = 0, time.monotonic() + args.swap_every
            while time.monotonic() < t0 / 1e9 + args.duration:
                time.sleep(max(0.0, min(t_next, t0 / 1e9 + args.duration) - time.monotonic()))
                if time.monotonic() >= t_next:
                    swaps += 1
                    mon.policy_pub.publish(mon.String(data=str(swap_paths[swaps % 2])))
                    t_next += args.swap_every
        else:
            time.sleep(args.duration)
        with mon.lock:
            t1, cmd_window, n_obs1 = time.monotonic_ns(), mon.cmd_times[n_cmd0:], mon.obs_count
        t_end = time.monotonic()
        while not [d for t, d in mon.diag if t > t_end] and time.monotonic() < t_end + 3:
            time.sleep(0.02)
        diag = [d for t, d in mon.diag if t > t_end][0]
    finally:
        mon.close()
        stop(ctl)
        stop(sim)
    window = (t1 - t0) / 1e9
    gaps = np.diff(np.asarray(cmd_window, np.int64)) / 1e6 if len(cmd_window) > 1 else np.array([np.nan])
    f = lambda k: float(diag[k])  # noqa: E731
    ticks = int(diag["ticks"])
    return {
        "rate_hz": rate,
        "window_s": round(window, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "controller": {
            "window_s": round((ticks - 1) / f("achieved_rate_hz"), 3) if f("achieved_rate_hz") > 0 else None,
            "ticks": ticks,
            "achieved_rate_hz": f("achieved_rate_hz"),
            "missed_deadlines": int(diag["missed_deadlines"]),
            "late_ticks": int(diag["late_ticks"]),
            "skipped_ticks": int(diag["skipped_ticks"]),
            "commands": int(diag["commands"]),
            "ticks_without_command": ticks - int(diag["commands"]) - int(diag.get("held", 0)),
            "stale_events": int(diag["fault_episodes"]),
            "hot_swaps": int(diag["swaps"]),
            "latency_p50_ms": f("latency_p50_ms"),
            "latency_p99_ms": f("latency_p99_ms"),
            "latency_max_ms": f("latency_max_ms"),
            "lateness_p99_ms": f("lateness_p99_ms"),
        },
        "robot_side": {
            "commands_per_s": len(cmd_window) / window,
            "observations_per_s": (n_obs1 - n_obs0) / window,
            "max_command_gap_ms": float(np.nanmax(gaps)),
            "p99_command_gap_ms": float(np.nanpercentile(gaps, 99)),
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", type=float, nargs="+", default=[100.0, 250.0, 500.0])
    ap.add_argument("--duration", type=float, default=60.0, help="measurement window per rate [s]")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of commanding before the window")
    ap.add_argument("--checkpoint", default="", help="policy checkpoint (default: a briefly trained BRIDGER)")
    ap.add_argument("--train-steps", type=int, default=300, help="training steps of the default BRIDGER policy")
    ap.add_argument("--steps", type=int, default=0, help="BRIDGER steps (0: the checkpoint's)")
    ap.add_argument("--executor", default="events", choices=["auto", "single", "events", "multi"])
    ap.add_argument("--watchdog-periods", type=int, default=2)
    ap.add_argument("--sched-priority", type=int, default=0,
                    help="SCHED_FIFO priority for controller_node and sim_node (0: normal scheduling)")
    ap.add_argument("--swap-every", type=float, default=0.0,
                    help="announce a checkpoint (hot swap) every S seconds during the window (0: none)")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    args = ap.parse_args()

    from smiling_ros.ros.dds_env import child_env

    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    env = child_env()
    env["ROS_DOMAIN_ID"] = os.environ["ROS_DOMAIN_ID"]
    work = REPO / "runs" / "closed_loop"
    logdir = work / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    ckpt = Path(args.checkpoint) if args.checkpoint else work / "bridger.safetensors"
    if not ckpt.exists():
        if args.checkpoint:
            print(f"closed_loop: error: {ckpt}: checkpoint not found", file=sys.stderr)
            return 2
        print(f"training a BRIDGER policy for the benchmark ({args.train_steps} steps) -> {ckpt}")
        train_policy(ckpt, args.train_steps)
    from smiling_ros.learn.policy import load_policy

    pol = load_policy(ckpt, device="cpu")
    steps = args.steps or getattr(pol, "steps", None)

    if args.sched_priority:  # the monitor too (the simulator and the controller get it as well)
        from smiling_ros.control import set_sched_priority

        warning = set_sched_priority(args.sched_priority)
        if warning:
            print(f"closed_loop: warning: {warning}", file=sys.stderr)
    results = []
    for rate in args.rates:
        print(f"--- {rate:g} Hz: {args.duration:g} s window after {args.warmup:g} s warm-up", flush=True)
        results.append(run_rate(rate, args, ckpt, env, logdir))
        print(json.dumps(results[-1]), flush=True)

    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}"
    out = {"machine": machine, "python": platform.python_version(), "executor": args.executor,
           "policy": {"path": str(ckpt), "kind": getattr(pol, "kind", type(pol).__name__), "steps": steps},
           "watchdog_periods": args.watchdog_periods, "duration_s": args.duration, "swap_every_s": args.swap_every,
           "sched_priority": args.sched_priority,
           "command": " ".join([Path(sys.executable).name] + sys.argv), "results": results}
    Path(args.out).write_text(json.dumps(out, indent=2))

    hdr = (f"{'rate':>6} {'achieved':>9} {'ticks':>7} {'missed':>7} {'no cmd':>7} {'stale':>6} {'swaps':>5} "
           f"{'lat p50':>8} {'lat p99':>8} {'lat max':>8} {'late p99':>9} {'rx cmd/s':>9} {'obs/s':>7} {'max gap':>8}")
    print(f"\nclosed loop, {out['policy']['kind']} steps={steps}, executor={args.executor}, "
          f"sched_priority={args.sched_priority}, {machine}")
    print(hdr)
    print("  (load average over the runs: " + ", ".join(f"{r['load_average_1min']:.1f}" for r in results)
          + f" on {os.cpu_count()} cores)")
    for r in results:
        c, s = r["controller"], r["robot_side"]
        print(f"{r['rate_hz']:>6g} {c['achieved_rate_hz']:>9.2f} {c['ticks']:>7d} {c['missed_deadlines']:>7d} "
              f"{c['ticks_without_command']:>7d} {c['stale_events']:>6d} {c['hot_swaps']:>5d} "
              f"{c['latency_p50_ms']:>8.3f} {c['latency_p99_ms']:>8.3f} {c['latency_max_ms']:>8.2f} {c['lateness_p99_ms']:>9.3f} "
              f"{s['commands_per_s']:>9.1f} {s['observations_per_s']:>7.1f} {s['max_command_gap_ms']:>8.2f}")
    print("(times in ms; 'missed': deadlines missed by the controller's timer loop; 'no cmd': ticks without a "
          "command, stale or invalid input)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
