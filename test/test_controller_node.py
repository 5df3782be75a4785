"""controller_node over real DDS: the node runs as a separate process (``python -m
smiling_ros.nodes.controller_node``) and a harness node in this process plays the robot: it
publishes observations and records every command the controller sends.

Timing bounds over DDS carry slack for a loaded 2-core machine; the exact bounds (watchdog
acts after exactly ``watchdog_periods`` periods) are checked without ROS in test_controller.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import requires_ros
from smiling_ros.data.dataset import Normalizer
from smiling_ros.learn.policy import MlpActor, MlpPolicy, load_policy

pytestmark = requires_ros

RATE = 50.0
PERIOD = 1.0 / RATE
LOW, HIGH = np.array([-0.5, -3.0]), np.array([0.5, 3.0])
OBS_TOPIC, CMD_TOPIC, POLICY_TOPIC = "/observation", "/forward_command_controller/commands", "/smiling_ros/policy"
B_OUTPUT = np.array([-0.3, 0.25])  # policy B's constant action


# --------------------------------------------------------------------------- fixtures: files
def make_policies(d: Path) -> dict[str, str]:
    torch.manual_seed(0)
    a = MlpActor(3, 2, [8])
    with torch.no_grad():
        a.mu.weight.mul_(20.0)  # saturating outputs: the first element exceeds the limits
    MlpPolicy(a, Normalizer.identity(3), -2 * np.ones(2), 2 * np.ones(2)).save(d / "a.safetensors")
    b = MlpActor(3, 2, [8])
    with torch.no_grad():
        b.mu.weight.zero_()
        b.mu.bias.copy_(torch.atanh(torch.tensor(B_OUTPUT / 2.0, dtype=torch.float32)))
    MlpPolicy(b, Normalizer.identity(3), -2 * np.ones(2), 2 * np.ones(2)).save(d / "b.safetensors")
    c = MlpActor(4, 2, [8])  # another robot: 4 observations
    MlpPolicy(c, Normalizer.identity(4), -2 * np.ones(2), 2 * np.ones(2)).save(d / "c.safetensors")
    return {k: str(d / f"{k}.safetensors") for k in "abc"}


def write_config(d: Path, obs_size: int | None = None, name: str = "ctl.yaml", **controller) -> str:
    obs = {"topic": OBS_TOPIC, "type": "std_msgs/msg/Float64MultiArray", "field": "data"}
    if obs_size is not None:
        obs["size"] = obs_size
    data = {
        "rate_hz": RATE,
        "observation": [obs],
        "action": [{"topic": CMD_TOPIC, "type": "std_msgs/msg/Float64MultiArray", "field": "data"}],
        "limits": {"action_low": LOW.tolist(), "action_high": HIGH.tolist()},
        "controller": {"watchdog_periods": 2, "stop_action": "zero", "diagnostics_period_s": 0.5, **controller},
    }
    p = d / name
    p.write_text(yaml.safe_dump(data))
    return str(p)


def start_controller(env: dict, log: Path, *params: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "smiling_ros.nodes.controller_node", "--ros-args"]
    for p in params:
        cmd += ["-p", p]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


# --------------------------------------------------------------------------- the robot side
class Harness:
    """Publishes ``self.obs`` at RATE (nothing while it is None); records commands and diagnostics."""

    def __init__(self, domain_id: int | None = None):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import Float64MultiArray, String
        from std_srvs.srv import SetBool

        from smiling_ros.ros.qos import COMMAND, EVENTS, SENSOR

        self.ctx = rclpy.Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node(f"controller_harness_{id(self)}", context=self.ctx)
        self.Float64MultiArray, self.String, self.SetBool = Float64MultiArray, String, SetBool
        self.lock = threading.Lock()
        self.commands: list[tuple[float, np.ndarray]] = []
        self.published: list[float] = []
        self.diagnostics: list = []
        self.obs = None
        self.node.create_subscription(Float64MultiArray, CMD_TOPIC, self._on_cmd, COMMAND)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.obs_pub = self.node.create_publisher(Float64MultiArray, OBS_TOPIC, SENSOR)
        self.policy_pub = self.node.create_publisher(String, POLICY_TOPIC, EVENTS)
        self.estop = self.node.create_client(SetBool, "/controller_node/estop")
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.running = True
        self.threads = [threading.Thread(target=self._spin, daemon=True),
                        threading.Thread(target=self._publish_loop, daemon=True)]
        for t in self.threads:
            t.start()

    def _spin(self):
        while self.running:
            self.executor.spin_once(timeout_sec=0.05)

    def _publish_loop(self):
        next_t = time.monotonic()
        while self.running:
            obs = self.obs
            if obs is not None:
                self.obs_pub.publish(self.Float64MultiArray(data=[float(v) for v in obs]))
                with self.lock:
                    self.published.append(time.monotonic())
            next_t += PERIOD
            time.sleep(max(0.0, next_t - time.monotonic()))

    def _on_cmd(self, msg):
        with self.lock:
            self.commands.append((time.monotonic(), np.array(msg.data)))

    def _on_diag(self, msg):
        with self.lock:
            self.diagnostics.extend(s for s in msg.status if s.name.startswith("controller_node"))

    def since(self, t: float) -> list[tuple[float, np.ndarray]]:
        with self.lock:
            return [(tc, a) for tc, a in self.commands if tc > t]

    def wait_for(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = pred()
            if out:
                return out
            time.sleep(0.01)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def call_estop(self, engage: bool):
        assert self.estop.wait_for_service(timeout_sec=10), "~/estop service not available"
        fut = self.estop.call_async(self.SetBool.Request(data=engage))
        return self.wait_for(lambda: fut.result() if fut.done() else None, 10, "e-stop response")

    def close(self):
        self.running = False
        for t in self.threads:
            t.join(2)
        self.node.destroy_node()
        self.ctx.try_shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from smiling_ros.ros.dds_env import child_env

    d = tmp_path_factory.mktemp("controller")
    pols = make_policies(d)
    cfg = write_config(d)
    harness = Harness()
    log = d / "controller.log"
    proc = start_controller(child_env(), log, f"config:={cfg}", f"checkpoint:={pols['a']}")
    try:
        harness.obs = np.array([0.3, -0.2, 0.1])
        harness.wait_for(lambda: len(harness.since(0)) >= 5, 40, "first commands from controller_node")
        yield {"harness": harness, "proc": proc, "pols": pols, "log": log, "dir": d}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        harness.close()


def expected(path: str, obs) -> np.ndarray:
    pol = load_policy(path, device="cpu")
    return np.clip(pol.act(np.asarray(obs, np.float32)).astype(np.float64), LOW, HIGH)


def assert_safe(commands):
    for _, a in commands:
        assert a.shape == (2,) and np.all(np.isfinite(a)), a
        assert np.all(a >= LOW) and np.all(a <= HIGH), a


# --------------------------------------------------------------------------- tests
def test_commands_are_the_policy_clamped_to_limits(setup):
    h, pols = setup["harness"], setup["pols"]
    for o in ([0.3, -0.2, 0.1], [-1.0, 0.5, 2.0]):
        h.obs = np.array(o)
        t = time.monotonic() + 3 * PERIOD  # let commands from the previous observation drain
        want = expected(pols["a"], o)
        got = h.wait_for(lambda: [a for _, a in h.since(t)][5:], 10, "commands for the new observation")
        np.testing.assert_allclose(got[-1], want, rtol=1e-5, atol=1e-6)
    raw = load_policy(pols["a"], device="cpu").act(np.array([-1.0, 0.5, 2.0], np.float32))
    assert abs(raw[0]) > HIGH[0], "policy A should exceed the limits here (clamp exercised)"
    assert_safe(h.since(0))


@pytest.mark.parametrize("bad", [[float("nan"), 0.0, 0.0], [0.0, float("inf"), 1.0], [1e39, 0.0, 0.0],
                                 [0.1, 0.2], [0.1, 0.2, 0.3, 0.4]],
                         ids=["nan", "inf", "huge", "short", "long"])
def test_invalid_observations_produce_no_command(setup, bad):
    h = setup["harness"]
    h.obs = np.array([0.3, -0.2, 0.1])
    h.wait_for(lambda: len(h.since(time.monotonic() - 0.1)) >= 3, 10, "commands before the bad observations")
    t_bad = time.monotonic()
    h.obs = np.array(bad)
    time.sleep(0.6)
    after = h.since(t_bad)
    zeros = [t for t, a in after if not np.any(a)]
    # Commands computed before the switch may still be in flight for a period or so; after that,
    # nothing but one stop command (zeros) once the input has been invalid for watchdog_periods.
    assert not [a for t, a in after if np.any(a) and t > t_bad + 3 * PERIOD], after
    assert len(zeros) == 1 and all(t < zeros[0] for t, a in after if np.any(a)), after
    h.obs = np.array([0.3, -0.2, 0.1])
    t_ok = time.monotonic()
    h.wait_for(lambda: [a for _, a in h.since(t_ok) if np.any(a != 0)], 5, "commands after valid observations")
    assert_safe(h.since(0))


def test_watchdog_stops_within_two_periods_and_recovers(setup):
    h = setup["harness"]
    h.obs = np.array([0.3, -0.2, 0.1])
    h.wait_for(lambda: len(h.since(time.monotonic() - 0.1)) >= 3, 10, "commands before the sensor stops")
    h.obs = None
    time.sleep(2 * PERIOD)
    with h.lock:
        last_obs = h.published[-1]
    time.sleep(0.5)
    after = h.since(last_obs)
    nonzero = [(t, a) for t, a in after if np.any(a != 0)]
    zeros = [(t, a) for t, a in after if not np.any(a != 0)]
    assert len(zeros) == 1, after  # one stop command, then silence
    # Commands from the last observation: at most watchdog_periods + 1 ticks, +1 already in flight.
    assert len(nonzero) <= 2 + 2, nonzero
    assert zeros[0][0] > max([t for t, _ in nonzero], default=0)
    assert zeros[0][0] - last_obs < 2 * PERIOD + 0.1, "watchdog acted late"
    # The sensor comes back: commanding resumes at the next tick.
    h.obs = np.array([0.3, -0.2, 0.1])
    t_back = time.monotonic()
    first = h.wait_for(lambda: h.since(t_back), 5, "commands after observations return")
    assert first[0][0] - t_back < 2 * PERIOD + 0.1
    assert_safe(h.since(0))


def test_estop_stops_commanding_until_released(setup):
    h = setup["harness"]
    h.obs = np.array([0.3, -0.2, 0.1])
    h.wait_for(lambda: len(h.since(time.monotonic() - 0.1)) >= 3, 10, "commands before the e-stop")
    t0 = time.monotonic()
    resp = h.call_estop(True)
    assert resp.success and "engaged" in resp.message
    time.sleep(0.5)  # observations keep arriving all along
    after = h.since(t0)
    zeros = [t for t, a in after if not np.any(a)]
    assert len(zeros) == 1, after  # one stop command ...
    assert all(t < zeros[0] for t, a in after if np.any(a)), after  # ... and nothing after it
    n = len(h.diagnostics)
    status = h.wait_for(lambda: [d for d in h.diagnostics[n:]], 5, "/diagnostics while engaged")[0]
    assert {kv.key: kv.value for kv in status.values}["estop"] == "true" and "e-stop" in status.message
    assert h.call_estop(False).success
    t2 = time.monotonic()
    h.wait_for(lambda: [a for _, a in h.since(t2) if np.any(a != 0)], 5, "commands after release")


def test_diagnostics_report_latency_and_state(setup):
    h = setup["harness"]
    h.obs = np.array([0.3, -0.2, 0.1])
    n = len(h.diagnostics)
    h.wait_for(lambda: len(h.diagnostics) >= n + 2, 10, "/diagnostics")
    status = h.diagnostics[-1]
    values = {kv.key: kv.value for kv in status.values}
    for key in ("latency_p50_ms", "latency_p99_ms", "ticks", "missed_deadlines", "watchdog", "estop", "policy"):
        assert key in values
    assert float(values["latency_p99_ms"]) >= float(values["latency_p50_ms"]) > 0
    assert int(values["ticks"]) > 0 and values["estop"] == "false"
    assert values["policy"].endswith(".safetensors")


def test_hot_swap_and_refusal_of_another_robot(setup):
    h, pols, log = setup["harness"], setup["pols"], setup["log"]
    h.obs = np.array([0.3, -0.2, 0.1])
    h.policy_pub.publish(h.String(data=pols["b"]))
    t0 = time.monotonic()
    h.wait_for(lambda: [a for _, a in h.since(t0) if np.allclose(a, B_OUTPUT, atol=1e-6)], 20, "policy B's actions")
    # Commands kept coming during the swap (loading runs off the control thread).
    window = [t for t, _ in h.since(t0)]
    assert np.max(np.diff([t0] + window)) < 0.5
    # A checkpoint for another robot is refused; B stays in charge.
    h.policy_pub.publish(h.String(data=pols["c"]))
    h.wait_for(lambda: "hot swap refused" in log.read_text(), 20, "the refusal in the log")
    line = [ln for ln in log.read_text().splitlines() if "hot swap refused" in ln][0]
    assert "obs_dim is 4" in line and "keeping" in line and pols["b"] in line
    t1 = time.monotonic()
    h.wait_for(lambda: len(h.since(t1)) >= 5, 5, "commands after the refusal")
    assert all(np.allclose(a, B_OUTPUT, atol=1e-6) for _, a in h.since(t1))
    assert_safe(h.since(0))
    h.policy_pub.publish(h.String(data=pols["a"]))  # back to A for any later test


def other_domain() -> int:
    """A ROS domain beside this test process's own (where the module's controller runs)."""
    return (int(os.environ["ROS_DOMAIN_ID"]) - 101 + 65) % 130 + 101


@pytest.mark.slow
def test_sigkill_stops_commands_restart_and_sigterm_are_clean(tmp_path):
    from smiling_ros.ros.dds_env import child_env

    pols = make_policies(tmp_path)
    cfg = write_config(tmp_path, follow_announcements=False)
    domain = other_domain()
    ros_env = child_env(domain_id=domain)
    h = Harness(domain_id=domain)
    try:
        h.obs = np.array([0.3, -0.2, 0.1])
        p1 = start_controller(ros_env, tmp_path / "c1.log", f"config:={cfg}", f"checkpoint:={pols['a']}")
        h.wait_for(lambda: len(h.since(0)) >= 5, 40, "commands from the first controller")
        p1.send_signal(signal.SIGKILL)
        p1.wait(10)
        t_dead = time.monotonic()
        time.sleep(0.5)
        assert h.since(t_dead + 0.05) == []  # the robot side sees no further commands
        p2 = start_controller(ros_env, tmp_path / "c2.log", f"config:={cfg}", f"checkpoint:={pols['a']}")
        t2 = time.monotonic()
        h.wait_for(lambda: len(h.since(t2)) >= 5, 40, "commands from the restarted controller")
        p2.send_signal(signal.SIGTERM)
        assert p2.wait(15) == 0
        t_end = time.monotonic()
        time.sleep(0.2)
        cmds = h.since(t2)
        assert np.array_equal(cmds[-1][1], [0.0, 0.0]), "clean shutdown ends with the stop command"
        assert h.since(t_end) == []
        text = (tmp_path / "c2.log").read_text()
        assert "Traceback" not in text and "configured:" in text
    finally:
        h.close()


@pytest.mark.slow
def test_bad_parameters_fail_configure_with_one_line(tmp_path):
    from smiling_ros.ros.dds_env import child_env

    ros_env = child_env(domain_id=other_domain())
    pols = make_policies(tmp_path)
    cfg = write_config(tmp_path)
    sized = write_config(tmp_path, obs_size=3, name="sized.yaml")  # the config states the robot's obs size
    cases = {
        "rate": ([f"config:={cfg}", f"checkpoint:={pols['a']}", "control_rate_hz:=-5.0"],
                 "parameter 'control_rate_hz': must be > 0"),
        "type": ([f"config:={cfg}", f"checkpoint:={pols['a']}", "steps:=two"],
                 "parameter 'steps': expected int"),
        "safety": ([f"config:={cfg}", f"checkpoint:={pols['a']}", "stop_action:=none"],
                   "parameter 'stop_action': a safety setting, read from the robot config only"),
        "typo": ([f"config:={cfg}", f"checkpoint:={pols['a']}", "contol_rate_hz:=100"],
                 "parameter 'contol_rate_hz': unknown"),
        "robot": ([f"config:={sized}", f"checkpoint:={pols['c']}"], "obs_dim is 4 but this robot/task has 3"),
        "missing": ([f"config:={cfg}", f"checkpoint:={tmp_path / 'nope.safetensors'}"], "checkpoint not found"),
    }
    procs = {k: subprocess.Popen(
        [sys.executable, "-m", "smiling_ros.nodes.controller_node", "--ros-args"] + sum((["-p", p] for p in ps), []),
        env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for k, (ps, _) in cases.items()}
    for k, proc in procs.items():
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"{k}: controller_node did not exit: {out}") from None
        assert proc.returncode == 2, (k, out)
        assert "Traceback" not in out, out
        lines = [ln for ln in out.splitlines() if ln.strip()]
        assert len(lines) == 1 and cases[k][1] in lines[0] and "configure failed" in lines[0], (k, out)


@pytest.mark.slow
def test_lifecycle_driven_over_services_like_a_launch_file(tmp_path):
    """autostart:=false: the node waits unconfigured; ChangeState requests (what launch_ros sends)
    configure, activate, deactivate (one stop command, then silence), clean up and shut it down."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    from smiling_ros.ros.dds_env import child_env

    pols = make_policies(tmp_path)
    cfg = write_config(tmp_path, follow_announcements=False)
    domain = other_domain()
    h = Harness(domain_id=domain)
    proc = start_controller(child_env(domain_id=domain), tmp_path / "c.log", f"config:={cfg}",
                            f"checkpoint:={pols['a']}", "autostart:=false")
    try:
        change = h.node.create_client(ChangeState, "/controller_node/change_state")
        get = h.node.create_client(GetState, "/controller_node/get_state")
        assert change.wait_for_service(timeout_sec=40) and get.wait_for_service(timeout_sec=10)

        def call(client, req):
            fut = client.call_async(req)
            return h.wait_for(lambda: fut.result() if fut.done() else None, 20, f"{client.srv_name}")

        def transition(tid):
            return call(change, ChangeState.Request(transition=Transition(id=tid))).success

        def state():
            return call(get, GetState.Request()).current_state.label

        h.obs = np.array([0.3, -0.2, 0.1])
        assert state() == "unconfigured"
        time.sleep(0.3)
        assert h.since(0) == []  # nothing before activation
        assert transition(Transition.TRANSITION_CONFIGURE) and state() == "inactive"
        time.sleep(0.3)
        assert h.since(0) == []
        assert transition(Transition.TRANSITION_ACTIVATE) and state() == "active"
        h.wait_for(lambda: len(h.since(0)) >= 5, 10, "commands once active")
        assert transition(Transition.TRANSITION_DEACTIVATE) and state() == "inactive"
        t_off = time.monotonic()
        time.sleep(0.4)
        cmds = h.since(0)
        assert np.array_equal(cmds[-1][1], [0.0, 0.0]) and cmds[-1][0] < t_off + 0.1  # one stop, then silence
        assert transition(Transition.TRANSITION_ACTIVATE)
        t_on = time.monotonic()
        h.wait_for(lambda: len(h.since(t_on)) >= 3, 10, "commands after re-activation")
        assert transition(Transition.TRANSITION_DEACTIVATE) and transition(Transition.TRANSITION_CLEANUP)
        assert state() == "unconfigured"
        assert transition(Transition.TRANSITION_UNCONFIGURED_SHUTDOWN)
        assert proc.wait(15) == 0  # finalized: the process exits by itself
    finally:
        if proc.poll() is None:
            proc.kill()
        h.close()
    assert "Traceback" not in (tmp_path / "c.log").read_text()
