"""trainer_node as a separate process over real DDS: the 'ros' backend trains against sim_node
in lockstep, the 'mujoco' backend in-process; policy announcements and /diagnostics are received
by a listener node in this process; SIGTERM stops cleanly; SIGKILL + resume:=true continues
from the last checkpoint to the same step count as an uninterrupted run.

Budgets are tiny (a few hundred env steps, 32-unit nets): these tests check the plumbing, not
learning (test_smiling covers that)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO, requires_ros

pytestmark = [requires_ros, pytest.mark.slow]

POLICY_TOPIC = "/smiling_ros/policy"
LOG_EVERY = 25


# --------------------------------------------------------------------------- files
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny SMILING config and three scripted-expert demonstrations of ArmReach."""
    from smiling_ros.data.dataset import Dataset
    from smiling_ros.envs import ARM_REACH, make_env, scripted_expert

    d = tmp_path_factory.mktemp("trainer")
    env = make_env(ARM_REACH, seed=0)
    eps = []
    for i in range(3):
        obs, _ = env.reset(seed=i)
        ex = scripted_expert(env, seed=i)
        ex.reset(obs)
        o, a = [], []
        for _ in range(40):
            act = ex.act(obs)
            o.append(obs)
            a.append(act)
            obs, *_ = env.step(act)
        eps.append((np.array(o), np.array(a, np.float32)))
    Dataset.from_episodes(eps, {"task": ARM_REACH, "rate_hz": 20.0}).save(d / "demos")
    data = yaml.safe_load((REPO / "config" / "arm_reach.yaml").read_text())
    data["task"]["max_episode_steps"] = 40
    data["smiling"] = {
        "total_steps": 200, "T": 100, "K": 2, "score_hidden": 32, "score_batch": 64, "expert_steps": 50,
        "learner_every": 50, "learner_states": 128, "learner_fifo": 1000, "min_demo_states": 50,
        "eval_every": 100, "eval_episodes": 1, "checkpoint_every": 50, "log_every": LOG_EVERY,
        "sac": {"hidden": [32, 32], "batch_size": 32, "buffer_size": 2000, "learning_starts": 25},
    }
    data["expert"] = {"checkpoint": "scripted", "reference_episodes": 1}
    (d / "tiny.yaml").write_text(yaml.safe_dump(data))
    data["smiling"]["eval_episodes"] = 0  # no periodic evaluation: faster where it is not under test
    (d / "tiny_noeval.yaml").write_text(yaml.safe_dump(data))
    return {"dir": d, "config": str(d / "tiny.yaml"), "noeval": str(d / "tiny_noeval.yaml"), "demos": str(d / "demos")}


def child(ros_env) -> dict:
    return {**ros_env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start_node(module: str, env: dict, log: Path, *params: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", f"smiling_ros.nodes.{module}", "--ros-args"]
    for p in params:
        cmd += ["-p", p]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def trainer_params(files, out: Path, *extra: str, config: str = "config") -> list[str]:
    return [f"config:={files[config]}", f"dataset:={files['demos']}", f"out_dir:={out}", "device:=auto", *extra]


def stop(proc: subprocess.Popen, sig=signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def state_step(out: Path):
    """Env step of the run's trainer checkpoint (None while there is none)."""
    side = out / "state.json"
    if not side.exists():
        return None
    try:
        return int(json.loads(side.read_text())["step"])
    except (ValueError, KeyError):  # pragma: no cover - sidecar being replaced
        return None


def csv_steps(out: Path) -> list[int]:
    import csv

    with open(out / "train.csv", newline="") as f:
        return [int(float(r["step"])) for r in csv.DictReader(f)]


def wait_until(pred, timeout: float, what: str, proc=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = pred()
        if out:
            return out
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}:\n"
                                 + (Path(log).read_text()[-3000:] if log else ""))
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}"
                         + (":\n" + Path(log).read_text()[-3000:] if log else ""))


class Listener:
    """Policy announcements and trainer diagnostics, received in this process."""

    def __init__(self):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import String

        from smiling_ros.ros.qos import EVENTS

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx)
        self.node = rclpy.create_node(f"trainer_listener_{os.getpid()}", context=self.ctx)
        self.lock = threading.Lock()
        self.policies: list[str] = []
        self.diag: list[dict[str, str]] = []
        self.node.create_subscription(String, POLICY_TOPIC, self._on_policy, EVENTS)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.running = True
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while self.running:
            self.executor.spin_once(timeout_sec=0.05)

    def _on_policy(self, msg):
        with self.lock:
            self.policies.append(msg.data)

    def _on_diag(self, msg):
        with self.lock:
            for s in msg.status:
                if s.name.startswith("trainer_node"):
                    self.diag.append({"message": s.message, **{kv.key: kv.value for kv in s.values}})

    def close(self):
        self.running = False
        self.thread.join(2)
        self.node.destroy_node()
        self.ctx.try_shutdown()


@pytest.fixture
def listener():
    lis = Listener()
    yield lis
    lis.close()


def check_policy(path: str) -> None:
    from smiling_ros.learn.policy import load_policy

    pol = load_policy(path, device="cpu", obs_dim=8, act_dim=2)
    a = pol.act(np.zeros(8, np.float32))
    assert a.shape == (2,) and np.all(np.abs(a) <= 1.0)


# --------------------------------------------------------------------------- tests
def test_ros_backend_trains_against_sim_node_and_announces_policies(files, tmp_path, ros_env, listener):
    env = child(ros_env)
    sim = start_node("sim_node", env, tmp_path / "sim.log", f"config:={files['config']}", "mode:=lockstep")
    out = tmp_path / "run"
    log = tmp_path / "trainer.log"
    steps = 120
    trainer = start_node("trainer_node", env, log,
                         *trainer_params(files, out, "backend:=ros", f"steps:={steps}", "timeout_s:=20.0",
                                         config="noeval"))
    try:
        rc = trainer.wait(90)
    finally:
        stop(trainer)
        stop(sim)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "ros backend" in text
    # Episodes really ran on sim_node (40 steps each, ended by its TimeLimit).
    sim_log = (tmp_path / "sim.log").read_text()
    assert sim_log.count("ended (done): 40 steps") >= 2, sim_log[-2000:]
    assert state_step(out) == steps and csv_steps(out)[-1] == steps
    # Announcements: one per checkpoint (50, 100, 120), each a loadable deployable policy.
    wait_until(lambda: len(listener.policies) >= 3, 10, "policy announcements")
    with listener.lock:
        paths = list(listener.policies)
    assert [Path(p).name for p in paths] == [f"policy_{s:09d}.safetensors" for s in (50, 100, steps)]
    for p in paths:
        check_policy(p)
    # Progress on /diagnostics: steps, losses, return of the sim_node episodes.
    with listener.lock:
        diag = list(listener.diag)
    assert diag and int(diag[-1]["step"]) == steps
    assert any("critic_loss" in d for d in diag) and any("return" in d for d in diag)
    ep_returns = [float(d["return"]) for d in diag if "return" in d]
    assert all(r < 0 for r in ep_returns)  # ArmReach returns: the robot's true ones, from the end markers


def test_mujoco_backend_runs_and_sigterm_stops_cleanly(files, tmp_path, ros_env, listener):
    out = tmp_path / "run"
    log = tmp_path / "trainer.log"
    total = 5000
    trainer = start_node("trainer_node", child(ros_env), log, *trainer_params(files, out, f"steps:={total}"))
    try:
        wait_until(lambda: listener.policies, 60, "first policy announcement", trainer, log)
        wait_until(lambda: any("eval_return" in d for d in listener.diag), 30, "evaluation diagnostics",
                   trainer, log)
        trainer.send_signal(signal.SIGTERM)
        rc = trainer.wait(30)
    finally:
        stop(trainer, signal.SIGKILL)
    text = log.read_text()
    assert rc == 0, text[-3000:]
    assert "Traceback" not in text and "training stopped at step" in text
    stopped = state_step(out)
    assert stopped is not None and 50 <= stopped < total
    assert stopped % LOG_EVERY == 0  # the stop took effect at a log event, where a checkpoint was written
    wait_until(lambda: any(p.endswith(f"policy_{stopped:09d}.safetensors") for p in listener.policies), 10,
               "announcement of the checkpoint written at the stop")
    check_policy(str(out / "policies" / f"policy_{stopped:09d}.safetensors"))
    with listener.lock:
        d = [x for x in listener.diag if "success" in x]
    assert d and d[-1]["success"] in ("0", "1") and "normalized_return" in d[-1]


def test_sigkill_then_resume_continues_to_the_same_step_count(files, tmp_path, ros_env):
    out = tmp_path / "run"
    total = 200
    log1 = tmp_path / "trainer1.log"
    p1 = start_node("trainer_node", child(ros_env), log1,
                    *trainer_params(files, out, f"steps:={total}", config="noeval"))
    try:
        first = wait_until(lambda: state_step(out), 60, "first checkpoint", p1, log1)
        p1.send_signal(signal.SIGKILL)
        p1.wait(10)
    finally:
        stop(p1, signal.SIGKILL)
    killed_at = state_step(out)
    assert killed_at is not None and first <= killed_at < total, "the run finished before it was killed"
    log3 = tmp_path / "trainer3.log"
    p3 = start_node("trainer_node", child(ros_env), log3,
                    *trainer_params(files, out, f"steps:={total}", "resume:=true", config="noeval"))
    try:
        rc = p3.wait(90)
    finally:
        stop(p3, signal.SIGKILL)
    text = log3.read_text()
    assert rc == 0, text[-3000:]
    assert f"resuming at step {killed_at}" in text
    assert state_step(out) == total
    # The log reads as one uninterrupted run: every log step once, in order.
    assert csv_steps(out) == list(range(LOG_EVERY, total + 1, LOG_EVERY))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == total
    assert summary["wall_clock"]["steps_this_session"] == total - killed_at
    check_policy(str(out / "policy.safetensors"))


def test_n_envs_parameter_overrides_config_and_ros_backend_uses_one_env(files, tmp_path, ros_env):
    """mujoco backend: the n_envs parameter overrides the config's smiling.n_envs; ros backend:
    one robot is one env, so the config's n_envs is not used (logged)."""
    data = yaml.safe_load(Path(files["noeval"]).read_text())
    data["smiling"]["n_envs"] = 2
    cfg = tmp_path / "two_envs.yaml"
    cfg.write_text(yaml.safe_dump(data))

    def node(*params):
        return subprocess.run([sys.executable, "-m", "smiling_ros.nodes.trainer_node", "--ros-args"]
                              + [x for p in (f"config:={cfg}", f"dataset:={files['demos']}", *params)
                                 for x in ("-p", p)],
                              env=child(ros_env), capture_output=True, text=True, timeout=120)

    out = tmp_path / "run"
    proc = node(f"out_dir:={out}", "steps:=100", "n_envs:=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mujoco backend, 4 envs" in proc.stderr
    st = json.loads((out / "state.json").read_text())
    assert st["step"] == 100 and st["n_envs"] == 4 and st["buffer"]["n_envs"] == 4

    proc = node(f"out_dir:={tmp_path / 'robot'}", "backend:=ros", "timeout_s:=1.0")
    assert "the config's smiling.n_envs=2 is not used" in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2 and "no observation on /observation" in proc.stderr  # no robot here


@pytest.mark.parametrize("params, needle", [
    (["backend:=gazebo"], "parameter 'backend'"),
    (["backend:=ros", "n_envs:=2"], "parameter 'n_envs': backend 'ros' steps one robot"),
    (["n_envs:=0"], "parameter 'n_envs'"),
    (["dataset:=/nonexistent/demos"], "/nonexistent/demos"),
    (["backend:=ros", "timeout_s:=1.0"], "no observation on /observation within 1 s"),
    (["resume:=true"], "nothing to resume"),
])
def test_bad_input_is_one_line_and_exit_2(files, tmp_path, ros_env, params, needle):
    base = {k: v for k, v in (p.split(":=", 1) for p in trainer_params(files, tmp_path / "run"))}
    base.update(p.split(":=", 1) for p in params)
    proc = subprocess.run([sys.executable, "-m", "smiling_ros.nodes.trainer_node", "--ros-args"]
                          + [x for k, v in base.items() for x in ("-p", f"{k}:={v}")],
                          env=child(ros_env), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-3000:]
    assert errors[0].startswith("trainer_node: error:") and "Traceback" not in proc.stderr
