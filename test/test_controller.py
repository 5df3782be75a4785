"""ROS-free tests of the control loop behind controller_node (smiling_ros/control/).

Times are synthetic nanoseconds, so every watchdog and deadline bound is checked exactly here;
the node tests (test_controller_node.py) check the same behaviour over DDS between processes.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smiling_ros.io.fields import VectorAssembler
from smiling_ros.config import FieldSpec, config_from_dict
from smiling_ros.control import (
    ControlLoop,
    ControllerSection,
    DeadlineTracker,
    LatencyStats,
    PolicyLoader,
    Watchdog,
    load_controller_policy,
    make_assembler,
    resolve_limits,
    resolve_settings,
)
from smiling_ros.data.dataset import Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.policy import MlpActor, MlpPolicy

MS = 1_000_000
P = 10 * MS  # control period of the synthetic loop (100 Hz)
TOPIC = "/observation"


@dataclass
class Float64MultiArray:
    """A message object as the field mapping sees it (attribute ``data``)."""

    data: list = field(default_factory=list)
    __msgtype__: str = "std_msgs/msg/Float64MultiArray"


class ScriptedPolicy:
    """A Policy whose next output is set by the test (a real implementation of the protocol)."""

    def __init__(self, obs_dim: int = 3, act_dim: int = 2, output=None):
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.output = np.zeros(act_dim) if output is None else np.asarray(output, np.float64)
        self.resets = 0
        self.seen: list[np.ndarray] = []

    def act(self, obs):
        self.seen.append(np.array(obs))
        if isinstance(self.output, Exception):
            raise self.output
        return np.array(self.output, np.float32)

    def reset(self):
        self.resets += 1


def make_loop(policy=None, low=(-0.5, -0.5), high=(0.5, 0.5), **kw):
    policy = policy or ScriptedPolicy()
    spec = FieldSpec(topic=TOPIC, type="std_msgs/msg/Float64MultiArray", field="data")
    asm = make_assembler([spec], policy.obs_dim, kw.pop("max_abs", None))
    return ControlLoop(policy, asm, np.array(low), np.array(high), P, **kw), policy


def obs(*values):
    return Float64MultiArray(data=list(values))


def test_commands_are_clamped_policy_outputs():
    loop, pol = make_loop()
    pol.output = np.array([0.2, 3.0])
    assert loop.on_message(TOPIC, obs(1, 2, 3), 0) is None
    r = loop.tick(1 * MS)
    assert r.reason == "command"
    np.testing.assert_allclose(r.action, [0.2, 0.5])
    np.testing.assert_allclose(pol.seen[-1], [1, 2, 3])
    assert loop.clamped == 1


def test_no_command_before_first_observation():
    loop, _ = make_loop()
    r = loop.tick(0)
    assert r.action is None and r.reason == "waiting"
    assert loop.watchdog.state == "waiting"


@pytest.mark.parametrize("periods", [1, 2, 5])
def test_watchdog_stops_after_exactly_watchdog_periods_and_resumes(periods):
    loop, pol = make_loop(watchdog_periods=periods)
    pol.output = np.array([0.1, -0.1])
    loop.on_message(TOPIC, obs(0, 0, 0), 0)
    # Ticks every period after the observation: commands while age <= periods * P.
    results = [loop.tick(k * P) for k in range(periods + 3)]
    reasons = [r.reason for r in results]
    assert reasons[: periods + 1] == ["command"] * (periods + 1)
    assert reasons[periods + 1] == "stop"  # the single zero command
    np.testing.assert_array_equal(results[periods + 1].action, [0.0, 0.0])
    assert "stale" in results[periods + 1].event
    assert all(r.action is None for r in results[periods + 2:])
    # One nanosecond past the limit is already stale (the bound is exact).
    loop2, _ = make_loop(watchdog_periods=periods)
    loop2.on_message(TOPIC, obs(0, 0, 0), 0)
    assert loop2.tick(periods * P).reason == "command"
    assert loop2.tick(periods * P + 1).reason == "stop"
    # Fresh observation: the next tick commands again and the policy is reset.
    resets = pol.resets
    t = (periods + 10) * P
    loop.on_message(TOPIC, obs(1, 1, 1), t)
    r = loop.tick(t + 1)
    assert r.reason == "command" and "resumed" in r.event
    assert pol.resets == resets + 1


def test_hold_repeats_last_command_when_stale():
    loop, pol = make_loop(on_stale="hold", watchdog_periods=1)
    pol.output = np.array([0.3, 0.4])
    loop.on_message(TOPIC, obs(0, 0, 0), 0)
    first = loop.tick(0).action
    held = [loop.tick(k * P) for k in range(2, 6)]
    assert all(r.reason == "hold" for r in held)
    for r in held:
        np.testing.assert_array_equal(r.action, first)
    assert len(pol.seen) == 1  # no inference on stale observations


def test_stop_action_none_sends_nothing():
    loop, pol = make_loop(stop_action="none", watchdog_periods=1)
    pol.output = np.array([0.3, 0.4])
    loop.on_message(TOPIC, obs(0, 0, 0), 0)
    assert loop.tick(0).action is not None
    assert all(loop.tick(k * P).action is None for k in range(2, 5))
    assert loop.set_estop(True) is None


def test_zero_stop_action_needs_zero_inside_limits():
    with pytest.raises(UserError, match="stop_action 'zero'"):
        make_loop(low=(0.1, -1), high=(1, 1))
    make_loop(low=(0.1, -1), high=(1, 1), stop_action="none")


@pytest.mark.parametrize("bad", [[np.nan, 0, 0], [0, np.inf, 0], [0, 0, -np.inf]])
def test_nonfinite_observation_gives_no_command(bad):
    loop, pol = make_loop()
    pol.output = np.array([0.1, 0.1])
    loop.on_message(TOPIC, obs(*bad), 0)
    r = loop.tick(1)
    assert r.action is None and r.reason == "bad_observation"
    assert TOPIC in r.warning and ("NaN" in r.warning or "inf" in r.warning)
    assert not pol.seen
    loop.on_message(TOPIC, obs(1, 2, 3), 2)
    assert loop.tick(3).reason == "command"


def test_persistent_nan_stops_after_watchdog_periods():
    loop, pol = make_loop(watchdog_periods=2, on_stale="hold")
    pol.output = np.array([0.1, 0.1])
    loop.on_message(TOPIC, obs(0, 0, 0), 0)
    assert loop.tick(0).reason == "command"
    results = []
    for k in range(1, 7):  # NaN observations keep arriving: fresh, but invalid
        loop.on_message(TOPIC, obs(np.nan, 0, 0), k * P - 1)
        results.append(loop.tick(k * P))
    assert [r.reason for r in results] == ["bad_observation"] * 2 + ["stop"] + ["bad_observation"] * 3
    np.testing.assert_array_equal(results[2].action, [0, 0])
    assert all(r.action is None for i, r in enumerate(results) if i != 2)
    loop.on_message(TOPIC, obs(0, 0, 0), 7 * P)
    assert loop.tick(7 * P).reason == "command"


def test_huge_observation_beyond_max_abs_gives_no_command():
    loop, pol = make_loop(max_abs=1e3)
    loop.on_message(TOPIC, obs(0, 1e6, 0), 0)
    r = loop.tick(1)
    assert r.action is None and r.reason == "bad_observation" and "1e+06" in r.warning


def test_wrong_size_observation_is_rejected_and_never_used():
    loop, pol = make_loop(watchdog_periods=2)
    warning = loop.on_message(TOPIC, obs(1, 2), 0)  # first message of the wrong size
    assert warning and "size 3" in warning
    assert loop.tick(1).action is None  # nothing valid yet
    loop.on_message(TOPIC, obs(1, 2, 3), 10)
    assert loop.tick(11).reason == "command"
    assert "size 3" in loop.on_message(TOPIC, obs(1, 2, 3, 4), 12)
    # The rejected message does not refresh the observation: the watchdog runs out.
    assert loop.tick(10 + 2 * P).reason == "command"
    assert loop.tick(11 + 2 * P).reason == "stop"
    assert all(len(o) == 3 for o in pol.seen)


@pytest.mark.parametrize("output,reason", [
    ([np.nan, 0.0], "bad_action"),
    ([0.0, np.inf], "bad_action"),
    ([0.0], "bad_action"),
    (RuntimeError("boom"), "policy_error"),
])
def test_bad_policy_output_gives_no_command(output, reason):
    loop, pol = make_loop()
    pol.output = output if isinstance(output, Exception) else np.asarray(output)
    loop.on_message(TOPIC, obs(0, 0, 0), 0)
    r = loop.tick(1)
    assert r.action is None and r.reason == reason and r.warning


def test_estop_publishes_one_zero_then_nothing_until_released():
    loop, pol = make_loop()
    pol.output = np.array([0.2, 0.2])
    loop.on_message(TOPIC, obs(0, 0, 0), 0)
    assert loop.tick(1).reason == "command"
    np.testing.assert_array_equal(loop.set_estop(True), [0.0, 0.0])
    assert loop.set_estop(True) is None  # already engaged: no second zero
    for k in range(1, 4):
        loop.on_message(TOPIC, obs(0, 0, 0), k * P)
        r = loop.tick(k * P + 1)
        assert r.action is None and r.reason == "estop"
    loop.set_estop(False)
    loop.on_message(TOPIC, obs(0, 0, 0), 5 * P)
    assert loop.tick(5 * P + 1).reason == "command"


def test_stop_command_once_after_commanding():
    loop, pol = make_loop()
    assert loop.stop_command() is None  # never commanded: nothing to stop
    loop.on_message(TOPIC, obs(0, 0, 0), 0)
    loop.tick(1)
    np.testing.assert_array_equal(loop.stop_command(), [0, 0])
    assert loop.stop_command() is None


def test_policy_swap_happens_at_next_tick():
    loop, old = make_loop()
    old.output = np.array([0.1, 0.1])
    new = ScriptedPolicy(output=[-0.2, -0.2])
    loop.on_message(TOPIC, obs(0, 0, 0), 0)
    np.testing.assert_allclose(loop.tick(1).action, [0.1, 0.1])
    loop.offer_policy(new, "new.safetensors")
    r = loop.tick(2)
    np.testing.assert_allclose(r.action, [-0.2, -0.2])
    assert "new.safetensors" in r.event and loop.swaps == 1 and new.resets == 1
    assert loop.diagnostics()["policy"] == "new.safetensors"


@settings(max_examples=200, deadline=None)
@given(
    outputs=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=2, max_size=2),
    observation=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=5),
    age=st.integers(0, 5 * P),
    lo=st.floats(-10, 0), width=st.floats(0, 10),
)
def test_never_commands_nonfinite_or_out_of_limits(outputs, observation, age, lo, width):
    low, high = np.array([lo, lo]), np.array([lo + width, lo + width])
    loop, pol = make_loop(low=low, high=high, stop_action="none")
    pol.output = np.array(outputs)
    loop.on_message(TOPIC, obs(*observation), 0)
    r = loop.tick(age)
    if r.action is not None:
        assert np.all(np.isfinite(r.action)) and np.all(r.action >= low) and np.all(r.action <= high)
        assert len(observation) == 3 and np.all(np.isfinite(observation)) and age <= 2 * P


def test_watchdog_state_machine_events():
    wd = Watchdog(P, 2)
    assert wd.check(0, None) == ("waiting", None)
    state, event = wd.check(5, 0)
    assert state == "ok" and "fresh" in event
    assert wd.check(2 * P, 0) == ("ok", None)
    state, event = wd.check(2 * P + 1, 0)
    assert state == "stale" and "stale" in event and wd.stale_events == 1
    assert wd.check(3 * P, 0) == ("stale", None)
    state, event = wd.check(3 * P, 3 * P)
    assert state == "ok" and "resumed" in event


def test_deadline_tracker_counts_skipped_and_late_ticks():
    d = DeadlineTracker(P)
    d.observe(0, 0, 1 * MS)
    d.observe(P, P + 1 * MS, P + 2 * MS)
    assert d.missed == 0
    assert d.observe(2 * P, 2 * P, 3 * P + 1)  # finished after the next tick was due
    assert d.late == 1
    assert d.observe(5 * P, 5 * P, 5 * P + 1)  # slots 3 and 4 skipped by the timer
    assert d.skipped == 2 and d.missed == 3 and d.ticks == 4
    assert d.achieved_rate_hz() == pytest.approx(3 / 0.05)


def test_latency_stats_percentiles():
    s = LatencyStats()
    for v in range(1, 101):
        s.add(v * MS)
    assert s.percentile_ms(50) == pytest.approx(50, rel=0.03)
    assert s.percentile_ms(99) == pytest.approx(99, rel=0.03)
    assert s.percentile_ms(100) == 100.0  # capped at the true maximum
    assert s.max_ns == 100 * MS and s.count == 100 and s.mean_ms() == pytest.approx(50.5)
    for _ in range(10000):
        s.add(500)  # below the first bin edge (1 us)
    assert s.percentile_ms(50) <= 0.001
    s.reset()
    assert s.count == 0 and np.isnan(s.percentile_ms(50))


# --------------------------------------------------------------------------- settings, limits, loading
def write_cfg(tmp_path, controller=None, limits=None, obs_size=None):
    import yaml

    spec = {"topic": TOPIC, "type": "std_msgs/msg/Float64MultiArray", "field": "data"}
    if obs_size is not None:
        spec["size"] = obs_size
    data = {"rate_hz": 50.0, "observation": [spec],
            "action": [{"topic": "/forward_command_controller/commands", "field": "data"}]}
    if limits is not None:
        data["limits"] = {"action_low": limits[0], "action_high": limits[1]}
    if controller is not None:
        data["controller"] = controller
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def save_policy(path, obs_dim=3, act_dim=2, bound=2.0):
    import torch

    torch.manual_seed(0)
    pol = MlpPolicy(MlpActor(obs_dim, act_dim, [8]), Normalizer.identity(obs_dim),
                    -bound * np.ones(act_dim), bound * np.ones(act_dim))
    pol.save(path)
    return pol


def test_settings_parameters_override_config(tmp_path):
    cfg = write_cfg(tmp_path, controller={"watchdog_periods": 4, "on_stale": "hold", "control_rate_hz": 80.0})
    s = resolve_settings(cfg, "x.safetensors", {})
    assert (s.control_rate_hz, s.watchdog_periods, s.on_stale, s.device) == (80.0, 4, "hold", "cpu")
    s = resolve_settings(cfg, "x.safetensors", {"control_rate_hz": 250.0, "command_topic": "/c"})
    assert s.control_rate_hz == 250.0 and s.period_ns == 4_000_000 and s.command_topic == "/c"
    s = resolve_settings(write_cfg(tmp_path), "x.safetensors", {})
    assert s.control_rate_hz == 50.0  # unset everywhere: the config's rate_hz


@pytest.mark.parametrize("params,match", [
    ({"control_rate_hz": -5.0}, "parameter 'control_rate_hz': must be > 0"),
    ({"control_rate_hz": 0.0}, "parameter 'control_rate_hz'"),
    ({"steps": 0}, "parameter 'steps': must be >= 1"),
    ({"watchdog_periods": 0}, "parameter 'watchdog_periods'"),
    ({"on_stale": "maybe"}, "parameter 'on_stale': 'stop' or 'hold'"),
    ({"stop_action": "brake"}, "parameter 'stop_action'"),
    ({"command_topic": "relative"}, "parameter 'command_topic': topic names must be absolute"),
    ({"device": "tpu"}, "device: 'tpu'"),
])
def test_bad_parameters_are_one_line_errors(tmp_path, params, match):
    with pytest.raises(UserError, match=match) as exc:
        resolve_settings(write_cfg(tmp_path), "x.safetensors", params)
    assert "\n" not in str(exc.value)


def test_missing_config_or_checkpoint_and_bad_section(tmp_path):
    with pytest.raises(UserError, match="parameter 'config': required"):
        resolve_settings("", "x", {})
    with pytest.raises(UserError, match="parameter 'checkpoint': required"):
        resolve_settings(write_cfg(tmp_path), "", {})
    with pytest.raises(UserError, match="controller: unknown key 'rate'"):
        resolve_settings(write_cfg(tmp_path, controller={"rate": 5}), "x", {})
    with pytest.raises(UserError, match="controller.watchdog_periods: must be >= 1"):
        resolve_settings(write_cfg(tmp_path, controller={"watchdog_periods": 0}), "x", {})


def test_shipped_configs_have_valid_controller_sections():
    from smiling_ros.config import load_config

    for name in ("arm_reach", "hopper"):
        cfg = load_config(name)
        sec = cfg.section(ControllerSection, "controller")
        assert sec.on_stale in ("stop", "hold")


def test_limits_from_config_or_checkpoint(tmp_path):
    pol = save_policy(tmp_path / "p.safetensors", bound=2.0)
    cfg = config_from_dict({"observation": [{"topic": TOPIC}], "limits": {"action_low": [-1, -1],
                                                                           "action_high": [1, 1]}})
    low, high = resolve_limits(cfg, pol, "p")
    np.testing.assert_array_equal(high, [1, 1])
    low, high = resolve_limits(config_from_dict({"observation": [{"topic": TOPIC}]}), pol, "p")
    np.testing.assert_array_equal(high, [2, 2])
    with pytest.raises(UserError, match="checkpoint for another robot: act_dim is 2"):
        resolve_limits(config_from_dict({"observation": [{"topic": TOPIC}], "limits": {
            "action_low": [-1, -1, -1], "action_high": [1, 1, 1]}}), pol, "p")
    with pytest.raises(UserError, match="carries no action bounds"):
        resolve_limits(config_from_dict({"observation": [{"topic": TOPIC}]}), ScriptedPolicy(), "p")


def test_checkpoint_for_another_robot_is_refused(tmp_path):
    save_policy(tmp_path / "p.safetensors", obs_dim=3, act_dim=2)
    s = resolve_settings(write_cfg(tmp_path, limits=([-1, -1, -1], [1, 1, 1])), "p", {})
    with pytest.raises(UserError, match="act_dim is 2 but this robot/task has 3"):
        load_controller_policy(str(tmp_path / "p.safetensors"), s, None)
    s = resolve_settings(write_cfg(tmp_path, limits=([-1, -1], [1, 1]), obs_size=4), "p", {})
    with pytest.raises(UserError, match="obs_dim is 3 but this robot/task has 4"):
        load_controller_policy(str(tmp_path / "p.safetensors"), s, 4)
    spec = FieldSpec(topic=TOPIC, type="std_msgs/msg/Float64MultiArray", size=4)
    with pytest.raises(UserError, match="checkpoint for another robot: obs_dim is 3"):
        make_assembler([spec], 3)
    with pytest.raises(UserError, match="'type' is required"):
        make_assembler([FieldSpec(topic=TOPIC)], 3)


def test_loaded_policy_runs_in_the_loop(tmp_path):
    save_policy(tmp_path / "p.safetensors", bound=2.0)
    s = resolve_settings(write_cfg(tmp_path, limits=([-0.1, -0.1], [0.1, 0.1])), "p", {})
    pol = load_controller_policy(str(tmp_path / "p.safetensors"), s, None)
    asm = make_assembler(s.config.observation, pol.obs_dim)
    assert isinstance(asm, VectorAssembler) and asm.specs[0].size == 3
    low, high = resolve_limits(s.config, pol, "p")
    loop = ControlLoop(pol, asm, low, high, s.period_ns)
    o = np.array([0.5, -1.0, 2.0])
    loop.on_message(TOPIC, obs(*o), 0)
    r = loop.tick(1)
    np.testing.assert_allclose(r.action, np.clip(pol.act(o.astype(np.float32)), -0.1, 0.1), rtol=1e-6)


def test_policy_loader_reports_and_newest_wins(tmp_path):
    loaded, errors = [], []
    gate = threading.Event()

    def load(path):
        gate.wait(5)
        if "bad" in path:
            raise UserError(f"{path}: checkpoint for another robot")
        return path.upper()

    loader = PolicyLoader(load, lambda p, path: loaded.append(p), lambda path, why: errors.append(why))
    loader.request("a")
    time.sleep(0.05)  # 'a' is being loaded; 'b' is replaced by 'c' before it starts
    loader.request("b")
    loader.request("c")
    gate.set()
    deadline = time.monotonic() + 5
    while not loader.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loaded == ["A", "C"]
    loader.request("bad")
    deadline = time.monotonic() + 5
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    assert errors == ["bad: checkpoint for another robot"]
    loader.close()
