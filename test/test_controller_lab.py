"""controller_node on a lab's robot: an independent arm process (test/lab_arm.py, rclpy and numpy
only, none of this project's code) with the README's example config ("Using your own robot").

The arm publishes /joint_states at 500 Hz (header stamps; joints in another order than the config
lists them, plus a gripper joint) and /target_pose at 10 Hz, and integrates the velocity commands
it receives. It runs a schedule of phases (normal, then each fault, each followed by a normal
phase) and records every command with its receive time. The assertions are about counts and
order (which commands arrived between which events), not about durations, so a loaded machine
cannot fail them; the periods each fault took to stop and to resume are printed (bench/ has the
figures).
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import requires_ros

pytestmark = [requires_ros, pytest.mark.slow]  # a timed run of phases against the lab arm

REPO = Path(__file__).resolve().parent.parent
ARM = Path(__file__).resolve().parent / "lab_arm.py"
OUTPUT = 0.2  # rad/s: the test policy's constant command on every joint


def readme_config() -> dict:
    """The robot config of the README's "Using your own robot" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Using your own robot"):]
    block = section[section.index("```yaml\n") + 8:]
    return yaml.safe_load(block[:block.index("```")])


def write_config(d: Path, name: str = "robot.yaml", **controller) -> str:
    cfg = readme_config()
    cfg["controller"].update(controller)
    p = d / name
    p.write_text(yaml.safe_dump(cfg))
    return str(p)


def trained_checkpoint(d: Path, name: str = "policy", rate_hz: float | None = None, command_joints=None) -> str:
    """A policy as training writes it: its training config (and dataset rates) in the metadata.
    It commands OUTPUT on every joint whatever it observes, so a stop (zeros) is unmistakable."""
    from smiling_ros.config import config_from_dict
    from smiling_ros.data.dataset import Normalizer
    from smiling_ros.learn.policy import MlpActor, MlpPolicy

    cfg = readme_config()
    if rate_hz is not None:
        cfg["rate_hz"] = rate_hz
    if command_joints is not None:
        cfg["command"]["joints"] = command_joints
    train_cfg = config_from_dict(cfg, "robot.yaml")
    ds = d / f"{name}_dataset"
    ds.mkdir(exist_ok=True)
    (ds / "meta.json").write_text(json.dumps({"rate_hz": train_cfg.rate_hz, "topic_rates_hz": {
        "/joint_states": 500.0, "/target_pose": 10.0}}))
    torch.manual_seed(0)
    actor = MlpActor(9, 6, [8])
    with torch.no_grad():
        actor.mu.weight.zero_()
        actor.mu.bias.fill_(float(np.arctanh(OUTPUT / 0.5)))
    policy = MlpPolicy(actor, Normalizer.identity(9), -0.5 * np.ones(6), 0.5 * np.ones(6),
                       {"config": train_cfg.to_dict(), "dataset": {"path": str(ds)}})
    return str(policy.save(d / f"{name}.safetensors"))


def controller(env, log: Path, *params: str, params_files=()) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "smiling_ros.nodes.controller_node", "--ros-args"]
    for f in params_files:
        cmd += ["--params-file", str(f)]
    for p in params:
        cmd += ["-p", p]
    return subprocess.Popen(cmd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


# --------------------------------------------------------------------------- the fault run
PHASES = [["ok", 2.0], ["stale_js", 0.5], ["ok", 1.2], ["nan", 0.5], ["ok", 1.2], ["drop_joint", 0.5], ["ok", 1.2],
          ["freeze", 0.5], ["ok", 1.2], ["stale_target", 0.8], ["ok", 1.2]]
# The field each fault names in the controller's one log line, and the fault's kind.
EXPECTED = {
    "stale_js": ("stale", "/joint_states:position"),
    "nan": ("nonfinite", "/joint_states:position[elbow_joint]"),
    "drop_joint": ("rejected", "joint 'elbow_joint' not in JointState"),
    "freeze": ("frozen", "/joint_states:position"),
    "stale_target": ("stale", "/target_pose:pose.position"),
}


@pytest.fixture(scope="module")
def lab_run(tmp_path_factory):
    from smiling_ros.ros.dds_env import child_env, free_domain_id

    d = tmp_path_factory.mktemp("lab")
    env = child_env(domain_id=free_domain_id())
    cfg, ckpt = write_config(d), trained_checkpoint(d)
    ctl = controller(env, d / "ctl.log", f"config:={cfg}", f"checkpoint:={ckpt}", "diagnostics_period_s:=0.5")
    arm = subprocess.Popen([sys.executable, str(ARM), str(d / "arm.json"), json.dumps(PHASES)], env=env,
                           stdout=open(d / "arm.log", "w"), stderr=subprocess.STDOUT)
    try:
        assert arm.wait(240) == 0, (d / "arm.log").read_text()
    finally:
        if arm.poll() is None:
            arm.kill()
        rc = stop(ctl)
    log = (d / "ctl.log").read_text()
    assert rc == 0 and "Traceback" not in log, log[-3000:]
    run = json.loads((d / "arm.json").read_text())
    run["log"] = log
    run["period"] = 1.0 / readme_config()["rate_hz"]
    return run


def split(run):
    """Per fault phase: the commands received from its start to the end of the next ok phase."""
    cmds = [(t, np.asarray(v)) for t, v in run["commands"]]
    phases = run["phases"]
    out = []
    for i, ph in enumerate(phases):
        if ph["phase"] == "ok" or i + 1 >= len(phases):
            continue
        ok = phases[i + 1]
        window = [(t, v) for t, v in cmds if ph["start"] <= t < ok["end"]]
        out.append((ph, ok, window))
    return cmds, out


def is_zero(v) -> bool:
    return bool(np.all(v == 0.0))


def test_every_command_is_finite_within_limits_and_in_the_config_order(lab_run):
    cmds, _ = split(lab_run)
    assert len(cmds) > 200
    for _, v in cmds:
        assert v.shape == (6,) and np.all(np.isfinite(v)) and np.all(np.abs(v) <= 0.5)
    # The policy's command reaches the arm unchanged once ramped in (no joint reordering on the way).
    assert any(np.allclose(v, OUTPUT) for _, v in cmds)


def test_multi_rate_topics_cause_no_stop(lab_run):
    """500 Hz joint states and a 10 Hz target at 100 Hz: the slow topic is judged by its own rate,
    so the only target fault in the whole run is the injected one. (A joint-state stop outside the
    injected faults is a real gap in the stream of a loaded machine, and is printed.)"""
    first = lab_run["phases"][0]
    assert first["phase"] == "ok"
    before = [v for t, v in lab_run["commands"] if t < first["end"]]
    assert len(before) > 50
    faults = [ln for ln in lab_run["log"].splitlines() if "fault: " in ln and "stopped commanding" in ln]
    assert len([ln for ln in faults if "/target_pose" in ln]) == 1, faults
    print(f"\n{len(faults)} fault episodes for {len(EXPECTED)} injected faults; "
          f"{sum(is_zero(v) for v in before)} stops in the first {first['end'] - first['start']:.1f} s")


@pytest.mark.parametrize("fault", list(EXPECTED))
def test_each_fault_stops_once_and_commanding_resumes_with_a_ramp(lab_run, fault):
    cmds, phases = split(lab_run)
    period = lab_run["period"]
    (ph, ok, window), = [p for p in phases if p[0]["phase"] == fault]
    first_good = ok.get("first_good_target" if fault == "stale_target" else "first_good", ok["start"])
    zeros = [i for i, (t, v) in enumerate(window) if is_zero(v) and t < first_good]
    # One stop per fault episode (a real joint-state gap on a loaded machine may add an episode).
    assert len(zeros) >= 1, f"{fault}: no stop command"
    z = zeros[0]
    t_zero = window[z][0]
    # Commands between the fault's start and the stop were computed from samples that were still
    # valid (in flight, or younger than the field's maximum age): at most that many control periods.
    max_age_periods = 20 if fault == "stale_target" else 2
    bound = max_age_periods + 3 if fault in ("stale_js", "stale_target", "freeze") else 3
    assert z <= bound, f"{fault}: {z} commands after the fault began, before the stop"
    # Nothing between the (last) stop and the first good sample after the fault.
    assert all(t >= first_good for t, _ in window[zeros[-1] + 1:]), f"{fault}: commanded from faulty input"
    # Resumed: commands again, ramped in from rest (max_rate 2 rad/s^2: 0.02 rad/s in the first period).
    after = [v for t, v in window[zeros[-1] + 1:]]
    assert sum(not is_zero(v) for v in after) >= 10, f"{fault}: did not resume ({len(after)} commands)"
    assert np.max(np.abs(after[0])) <= 2.0 * period + 1e-9
    # The episode is logged, naming the field.
    kind, name = EXPECTED[fault]
    lines = [ln for ln in lab_run["log"].splitlines() if f"fault: {kind}:" in ln and name in ln]
    assert lines, (fault, lab_run["log"][-2000:])
    stop_periods = (t_zero - (ph["start"] if fault in ("nan", "drop_joint", "freeze") else
                              ph["last_good_target" if fault == "stale_target" else "last_good_js"])) / period
    resume_periods = ([t for t, v in window[zeros[-1] + 1:]][0] - first_good) / period
    print(f"\n{fault}: stop {stop_periods:.1f} periods after the fault began, resumed "
          f"{resume_periods:.1f} periods after the first good sample")


# --------------------------------------------------------------------------- refused at configure
@pytest.mark.parametrize("case,match", [
    ("permuted", "command joints .* in the checkpoint, .* in the config (same joints, another order)"),
    ("rate", "trained at 100 Hz, control_rate_hz is 250 Hz"),
])
def test_permuted_joints_and_rate_mismatch_are_refused_at_configure(tmp_path, case, match):
    from smiling_ros.ros.dds_env import child_env, free_domain_id

    cfg = write_config(tmp_path)
    joints = readme_config()["command"]["joints"]
    if case == "permuted":
        ckpt, extra = trained_checkpoint(tmp_path, command_joints=[joints[1], joints[0]] + joints[2:]), []
    else:
        ckpt, extra = trained_checkpoint(tmp_path), ["control_rate_hz:=250.0"]
    proc = controller(child_env(domain_id=free_domain_id()), tmp_path / "c.log", f"config:={cfg}",
                      f"checkpoint:={ckpt}", *extra)
    try:
        rc = proc.wait(90)
    finally:
        stop(proc)
    lines = [ln for ln in (tmp_path / "c.log").read_text().splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "configure failed" in lines[0], lines
    assert re.search(match.replace("(", r"\(").replace(")", r"\)"), lines[0]), lines[0]


# --------------------------------------------------------------------------- launch parameter path
def launch_params(d: Path, cfg: str, ckpt: str, **more) -> Path:
    """The parameters deploy.launch.py gives the controller, as launch_ros passes them: the
    package's config/nodes.yaml, then a params file of the launch arguments (empty ones unset)."""
    p = d / "launch_params.yaml"
    p.write_text(yaml.safe_dump({"controller_node": {"ros__parameters": {
        "config": cfg, "checkpoint": ckpt, "control_rate_hz": "", "steps": "", "command_topic": "",
        "autostart": True, **more}}}))
    return p


def test_launch_path_keeps_the_robot_configs_safety_settings(tmp_path):
    from smiling_ros.ros.dds_env import child_env, free_domain_id

    env = child_env(domain_id=free_domain_id())
    cfg = write_config(tmp_path, stop_action="none", watchdog_periods=15)
    ckpt = trained_checkpoint(tmp_path)
    proc = controller(env, tmp_path / "c.log", params_files=[REPO / "config" / "nodes.yaml",
                                                             launch_params(tmp_path, cfg, ckpt)])
    try:
        import time

        deadline = time.monotonic() + 90
        while "configured:" not in (tmp_path / "c.log").read_text() and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        rc = stop(proc)
    log = (tmp_path / "c.log").read_text()
    assert rc == 0 and "configured:" in log, log
    assert "on a fault: none" in log
    # 15 periods: of the control period (10 ms) for 500 Hz joint states, of 10 Hz for the target
    assert "/joint_states:position 150 ms" in log and "/target_pose:pose.position 1500 ms" in log
    # A params file that tries to set a safety setting is refused with one line.
    bad = controller(env, tmp_path / "bad.log", params_files=[
        REPO / "config" / "nodes.yaml", launch_params(tmp_path, cfg, ckpt, stop_action="zero")])
    assert bad.wait(90) == 2
    lines = [ln for ln in (tmp_path / "bad.log").read_text().splitlines() if ln.strip()]
    assert len(lines) == 1 and "parameter 'stop_action': a safety setting" in lines[0], lines
