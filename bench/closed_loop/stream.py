"""Policy rate and command rate apart over ROS 2: a chunked BRIDGER policy at 20 Hz feeding a
500 Hz forward command stream and a joint-trajectory stream (100 Hz by default: a JTC
interpolates between the points itself).

    python bench/closed_loop/stream.py                        # 60 s per interface
    python bench/closed_loop/stream.py --duration 10 --interfaces forward

Per interface three processes: sim_node (own ArmReach task at its 20 Hz, realtime; for
``joint_trajectory`` its JTC-like follower consumes the trajectories), controller_node (the
policy at ``--policy-rate`` on its planner thread, commands streamed at ``--command-rate``;
``chunk_blend`` from ``--blend``) and this script's monitor, which counts what the robot side
receives. After a warm-up the controller's statistics are cleared (``~/reset_stats``); after the
window its /diagnostics give the command stream's achieved rate, missed ticks (a tick that ended
after the next was due, or a skipped timer slot), the command tick's own latency, and the
planner's inference time per plan, total inference time in the window (what the stream hid),
actions dropped as already past on arrival, and ticks with no plan. The monitor adds commands/s
received and the longest gap between two received commands.

Policy: BRIDGER with ``--chunk`` actions per plan (heuristic source, the config's architecture),
trained briefly here (runs/closed_loop/bridger_chunk<C>.safetensors, reused when present): timing
does not depend on how well it is trained. Writes bench/closed_loop/results_stream.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from run import stop  # noqa: E402

JTC_TOPIC = "/joint_trajectory_controller/joint_trajectory"
FWD_TOPIC = "/forward_command_controller/commands"


def train_chunked(path: Path, chunk: int, train_steps: int) -> None:
    import torch

    torch.set_num_threads(1)
    from smiling_ros.config import load_config
    from smiling_ros.envs import make_env_from_config, scripted_expert
    from smiling_ros.learn.common import collect_dataset
    from smiling_ros.methods.bridger.train import load_section, make_source, train_bridger

    cfg = load_config("arm_reach")
    env = make_env_from_config(cfg)
    expert = scripted_expert(env, seed=0)
    ds = collect_dataset(env, expert.act, episodes=20, seed=0, task=cfg.task.env, on_reset=expert.reset)
    sec = load_section(cfg)
    sec.train_steps, sec.chunk, sec.execute = train_steps, chunk, 0
    src = make_source("heuristic", ds, cfg, sec, progress=False)
    policy = train_bridger(ds, src, sec, env.action_space.low, env.action_space.high, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    policy.save(path, {"task": cfg.task.env})


def config_for(interface: str, work: Path) -> str:
    from smiling_ros.config import resolve_config_path

    data = yaml.safe_load(resolve_config_path("arm_reach").read_text())
    if interface == "joint_trajectory":
        data["command"].update({"interface": "joint_trajectory", "topic": JTC_TOPIC})
    data["controller"]["watchdog_periods"] = 3  # a safety setting: read from the robot config only
    p = work / f"arm_{interface}.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


class Monitor:
    def __init__(self, interface: str):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        from std_srvs.srv import Trigger
        from trajectory_msgs.msg import JointTrajectory

        from smiling_ros.ros.qos import COMMAND, SENSOR

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node("stream_monitor", context=self.ctx)
        self.lock = threading.Lock()
        self.cmd_times: list[int] = []
        self.values: list[np.ndarray] = []
        self.diag: list[tuple[float, dict]] = []
        if interface == "joint_trajectory":
            self.node.create_subscription(JointTrajectory, JTC_TOPIC, self._on_traj, COMMAND)
        else:
            self.node.create_subscription(Float64MultiArray, FWD_TOPIC, self._on_cmd, COMMAND)
        self.node.create_subscription(JointState, "/joint_states", lambda m: None, SENSOR)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.reset_client = self.node.create_client(Trigger, "/controller_node/reset_stats")
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
            self.values.append(np.array(msg.data))

    def _on_traj(self, msg):
        t = time.monotonic_ns()
        with self.lock:
            self.cmd_times.append(t)

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


def run_interface(interface: str, args, ckpt: Path, env: dict, work: Path) -> dict:
    import subprocess

    logdir = work / "logs"
    cfg = config_for(interface, work)
    ros = [sys.executable, "-m"]
    rt = ["chrt", "-f", str(args.sched_priority)] if args.sched_priority else []
    sim = subprocess.Popen(
        rt + ros + ["smiling_ros.nodes.sim_node", "--ros-args", "-p", f"config:={cfg}", "-p", "mode:=realtime",
               "-p", "seed:=0"],
        env=env, stdout=open(logdir / f"stream_sim_{interface}.log", "w"), stderr=subprocess.STDOUT)
    rate = args.command_rate if interface == "forward" else args.trajectory_rate
    params = [f"config:={cfg}", f"checkpoint:={ckpt}", f"control_rate_hz:={args.policy_rate}",
              f"command_rate_hz:={rate}", f"chunk_blend:={args.blend}", "diagnostics_period_s:=0.5",
              f"executor:={args.executor}", f"sched_priority:={args.sched_priority}"]
    ctl = subprocess.Popen(ros + ["smiling_ros.nodes.controller_node", "--ros-args"]
                           + sum((["-p", p] for p in params), []),
                           env=env, stdout=open(logdir / f"stream_controller_{interface}.log", "w"),
                           stderr=subprocess.STDOUT)
    mon = Monitor(interface)
    try:
        deadline = time.monotonic() + 60
        while len(mon.cmd_times) < 10:
            if time.monotonic() > deadline or ctl.poll() is not None or sim.poll() is not None:
                raise RuntimeError(f"{interface}: no commands; see {logdir}")
            time.sleep(0.05)
        time.sleep(args.warmup)
        if not mon.reset_stats():
            raise RuntimeError("controller_node ~/reset_stats did not answer")
        with mon.lock:
            t0, n0 = time.monotonic_ns(), len(mon.cmd_times)
        time.sleep(args.duration)
        with mon.lock:
            t1, window_times, values = time.monotonic_ns(), mon.cmd_times[n0:], mon.values[n0:]
        t_end = time.monotonic()
        while not [d for t, d in mon.diag if t > t_end] and time.monotonic() < t_end + 3:
            time.sleep(0.02)
        diag = [d for t, d in mon.diag if t > t_end][0]
    finally:
        mon.close()
        stop(ctl)
        stop(sim)
    window = (t1 - t0) / 1e9
    gaps = np.diff(np.asarray(window_times, np.int64)) / 1e6
    f = lambda k: float(diag[k])  # noqa: E731
    out = {
        "interface": interface,
        "target_rate_hz": rate,
        "window_s": round(window, 3),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "stream": {
            "command_ticks": int(diag["command_ticks"]),
            "command_rate_hz": f("command_rate_hz"),
            "missed_ticks": int(diag["command_missed"]),
            "tick_lateness_p99_ms": f("command_lateness_p99_ms"),
            "tick_latency_p99_ms": f("command_latency_p99_ms"),
            "tick_latency_max_ms": f("command_latency_max_ms"),
            "ticks_without_plan": int(diag["plan_exhausted_ticks"]),
        },
        "policy": {
            "plans": int(diag["plans"]),
            "rate_hz": f("achieved_rate_hz"),
            "inference_p50_ms": f("inference_p50_ms"),
            "inference_p99_ms": f("inference_p99_ms"),
            "inference_max_ms": f("inference_max_ms"),
            "inference_total_ms": f("inference_total_ms"),
            "dropped_actions": int(diag["dropped_actions"]),
            "planned_actions": int(diag["planned_actions"]),
            "late_plans": int(diag["late_plans"]),
        },
        "robot_side": {
            "commands_per_s": len(window_times) / window,
            "max_gap_ms": float(gaps.max()) if gaps.size else float("nan"),
            "p99_gap_ms": float(np.percentile(gaps, 99)) if gaps.size else float("nan"),
            "gaps_over_2_periods": int((gaps > 2e3 / rate).sum()),
        },
    }
    if values:
        v = np.array(values)
        out["robot_side"]["max_step_between_commands"] = float(np.abs(np.diff(v, axis=0)).max())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--interfaces", nargs="+", default=["forward", "joint_trajectory"],
                    choices=["forward", "joint_trajectory"])
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--policy-rate", type=float, default=20.0)
    ap.add_argument("--command-rate", type=float, default=500.0, help="forward command stream rate [Hz]")
    ap.add_argument("--trajectory-rate", type=float, default=100.0,
                    help="joint-trajectory stream rate [Hz] (the JTC interpolates between points itself)")
    ap.add_argument("--blend", default="ensemble", choices=["replace", "ensemble"])
    ap.add_argument("--chunk", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--executor", default="events", choices=["auto", "single", "events", "multi"])
    ap.add_argument("--sched-priority", type=int, default=0,
                    help="SCHED_FIFO priority for controller_node and sim_node (0: normal scheduling)")
    ap.add_argument("--out", default=str(HERE / "results_stream.json"))
    args = ap.parse_args()

    from smiling_ros.ros.dds_env import child_env

    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    env = child_env()
    env["ROS_DOMAIN_ID"] = os.environ["ROS_DOMAIN_ID"]
    work = REPO / "runs" / "closed_loop"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    ckpt = work / f"bridger_chunk{args.chunk}.safetensors"
    if not ckpt.exists():
        print(f"training a chunked BRIDGER policy ({args.train_steps} steps, chunk {args.chunk}) -> {ckpt}")
        train_chunked(ckpt, args.chunk, args.train_steps)
    results = []
    for interface in args.interfaces:
        rate = args.command_rate if interface == "forward" else args.trajectory_rate
        print(f"--- {interface}: policy {args.policy_rate:g} Hz, commands {rate:g} Hz, "
              f"{args.duration:g} s window", flush=True)
        results.append(run_interface(interface, args, ckpt, env, work))
        print(json.dumps(results[-1]), flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}"
    out = {"machine": machine, "python": platform.python_version(), "policy": str(ckpt), "chunk": args.chunk,
           "policy_rate_hz": args.policy_rate, "command_rate_hz": args.command_rate,
           "trajectory_rate_hz": args.trajectory_rate, "blend": args.blend,
           "executor": args.executor, "duration_s": args.duration, "sched_priority": args.sched_priority,
           "command": " ".join([Path(sys.executable).name] + sys.argv), "results": results}
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"\nstream: BRIDGER chunk {args.chunk} at {args.policy_rate:g} Hz -> commands "
          f"({args.blend}), " + (f"SCHED_FIFO {args.sched_priority}" if args.sched_priority else "normal scheduling")
          + f", {machine}")
    print(f"{'interface':>16} {'target':>6} {'rate':>8} {'ticks':>6} {'missed':>6} {'rx/s':>7} {'max gap':>8} {'tick p99':>8} "
          f"{'tick max':>8} {'inf p50':>8} {'inf max':>8} {'inf total':>9} {'dropped':>7} {'no plan':>7}")
    for r in results:
        s, p, rs = r["stream"], r["policy"], r["robot_side"]
        print(f"{r['interface']:>16} {r['target_rate_hz']:>6g} {s['command_rate_hz']:>8.2f} {s['command_ticks']:>6d} {s['missed_ticks']:>6d} "
              f"{rs['commands_per_s']:>7.1f} {rs['max_gap_ms']:>8.2f} {s['tick_latency_p99_ms']:>8.3f} "
              f"{s['tick_latency_max_ms']:>8.2f} {p['inference_p50_ms']:>8.2f} {p['inference_max_ms']:>8.2f} "
              f"{p['inference_total_ms']:>9.0f} {p['dropped_actions']:>7d} {s['ticks_without_plan']:>7d}")
    print("(ms; 'inf total': inference time in the window, on the planner thread, hidden from the stream)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
