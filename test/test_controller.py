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
    SafetyEnvelope,
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


def make_loop(policy=None, low=(-0.5, -0.5), high=(0.5, 0.5), watchdog_periods=2, envelope=None, **kw):
    """A loop over one Float64MultiArray field (no header: receive time) whose maximum age is
    ``watchdog_periods`` control periods."""
    policy = policy or ScriptedPolicy()
    spec = FieldSpec(topic=TOPIC, type="std_msgs/msg/Float64MultiArray", field="data")
    asm = make_assembler([spec], policy.obs_dim, kw.pop("max_abs", None), period_s=P / 1e9,
                         stale_periods=watchdog_periods)
    return ControlLoop(policy, asm, np.array(low), np.array(high), P, watchdog_periods, envelope=envelope,
                       **kw), policy


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
def test_stale_input_stops_at_the_first_tick_past_its_max_age_and_resumes(periods):
    loop, pol = make_loop(watchdog_periods=periods)
    pol.output = np.array([0.1, -0.1])
    loop.on_message(TOPIC, obs(0, 0, 0), 0)
    # Ticks every period after the observation: commands while age <= periods * P.
    results = [loop.tick(k * P) for k in range(periods + 3)]
    reasons = [r.reason for r in results]
    assert reasons[: periods + 1] == ["command"] * (periods + 1)
    assert reasons[periods + 1] == "stop"  # the single zero command
    np.testing.assert_array_equal(results[periods + 1].action, [0.0, 0.0])
    assert results[periods + 1].event.startswith("fault: stale: /observation:data")
    assert all(r.action is None and r.reason == "fault" and r.event is None for r in results[periods + 2:])
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
    d = loop.diagnostics()
    assert d["fault_episodes"] == 1 and d["faults_stale"] == 1 and d["watchdog"] == "ok"


@pytest.mark.parametrize("how", [{"stop_action": "hold"}, {"on_stale": "hold"}])
def test_hold_repeats_last_command_on_a_fault(how):
    loop, pol = make_loop(watchdog_periods=1, **how)
    pol.output = np.array([0.3, 0.4])
    loop.on_message(TOPIC, obs(0, 0, 0), 0)
    first = loop.tick(0).action
    held = [loop.tick(k * P) for k in range(2, 6)]
    assert all(r.reason == "hold" for r in held)
    for r in held:
        np.testing.assert_array_equal(r.action, first)
    assert len(pol.seen) == 1  # no inference on stale observations
    loop.on_message(TOPIC, obs(np.nan, 0, 0), 6 * P)  # any fault holds, NaN too
    assert loop.tick(6 * P).reason == "hold" and len(pol.seen) == 1


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
def test_nonfinite_observation_stops_at_that_tick(bad):
    loop, pol = make_loop()
    pol.output = np.array([0.1, 0.1])
    loop.on_message(TOPIC, obs(1, 2, 3), 0)
    assert loop.tick(1).reason == "command"
    loop.on_message(TOPIC, obs(*bad), 2)
    r = loop.tick(3)
    assert r.reason == "stop" and np.array_equal(r.action, [0, 0])
    k = int(np.flatnonzero(~np.isfinite(bad))[0])
    assert r.event.startswith(f"fault: nonfinite: /observation:data[{k}]: element {k} is")
    assert len(pol.seen) == 1
    for t in (4, 5):  # still NaN: nothing more, logged once
        loop.on_message(TOPIC, obs(*bad), t)
        r = loop.tick(t)
        assert r.action is None and r.event is None
    loop.on_message(TOPIC, obs(1, 2, 3), 6)
    assert loop.tick(7).reason == "command"
    assert loop.diagnostics()["faults_nonfinite"] == 1


def test_huge_observation_beyond_max_abs_is_a_fault():
    loop, pol = make_loop(max_abs=1e3)
    loop.on_message(TOPIC, obs(0, 1e6, 0), 0)
    r = loop.tick(1)
    assert r.action is None and r.reason == "fault" and "range" in r.event and "1e+06" in r.event
    assert not pol.seen


def test_wrong_size_observation_is_rejected_and_stops_at_the_next_tick():
    loop, pol = make_loop(watchdog_periods=2)
    warning = loop.on_message(TOPIC, obs(1, 2), 0)  # first message of the wrong size
    assert warning and "size 3" in warning
    assert loop.tick(1).action is None  # nothing valid yet
    loop.on_message(TOPIC, obs(1, 2, 3), 10)
    assert loop.tick(11).reason == "command"
    assert "size 3" in loop.on_message(TOPIC, obs(1, 2, 3, 4), 12)
    r = loop.tick(13)  # the field's newest message was unreadable: no command from the older one
    assert r.reason == "stop" and "rejected" in r.event and "size 3" in r.event
    assert all(len(o) == 3 for o in pol.seen) and len(pol.seen) == 1
    loop.on_message(TOPIC, obs(1, 2, 3), 14)
    assert loop.tick(15).reason == "command"


@pytest.mark.parametrize("output,kind", [
    ([np.nan, 0.0], "bad_action"),
    ([0.0, np.inf], "bad_action"),
    ([0.0], "bad_action"),
    (RuntimeError("boom"), "policy_error"),
])
def test_bad_policy_output_is_a_fault(output, kind):
    loop, pol = make_loop()
    loop.on_message(TOPIC, obs(0, 0, 0), 0)
    assert loop.tick(1).reason == "command"
    pol.output = output if isinstance(output, Exception) else np.asarray(output)
    r = loop.tick(2)
    assert r.reason == "stop" and np.array_equal(r.action, [0, 0]) and r.event.startswith(f"fault: {kind}")
    pol.output = np.zeros(2)
    assert loop.tick(3).reason == "command"


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


def test_ramp_in_after_activate_fault_and_estop_release():
    env = SafetyEnvelope([-1, -1], [1, 1], P, ramp_in_s=4 * P / 1e9)
    loop, pol = make_loop(low=(-1, -1), high=(1, 1), envelope=env, watchdog_periods=1)
    pol.output = np.array([0.8, -0.8])

    def run(t0):
        out = []
        for k in range(6):
            loop.on_message(TOPIC, obs(0, 0, 0), t0 + k * P)
            out.append(loop.tick(t0 + k * P).action[0])
        return out

    np.testing.assert_allclose(run(0), [0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    assert loop.tick(8 * P).reason == "stop"  # stale
    np.testing.assert_allclose(run(10 * P), [0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    loop.set_estop(True)
    loop.set_estop(False)
    np.testing.assert_allclose(run(20 * P), [0.2, 0.4, 0.6, 0.8, 0.8, 0.8])


# A sequence of events for the property tests: (dt since the previous event [ns], what).
EVENTS = st.lists(st.tuples(
    st.integers(0, 4 * P),
    st.one_of(
        st.tuples(st.just("msg"), st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=2, max_size=4)),
        st.tuples(st.just("tick"), st.lists(st.floats(-5, 5), min_size=2, max_size=2)),
        st.tuples(st.just("estop"), st.booleans()),
    )), max_size=60)


@settings(max_examples=150, deadline=None)
@given(events=EVENTS, lo=st.floats(-2, 0), width=st.floats(0.01, 3), rate=st.floats(0.1, 50),
       ramp=st.integers(0, 5), periods=st.integers(1, 3), stop=st.sampled_from(["zero", "hold", "none"]))
def test_no_command_violates_a_limit_or_comes_from_stale_or_invalid_input(events, lo, width, rate, ramp, periods,
                                                                           stop):
    low, high = np.array([lo, lo]), np.array([lo + width, lo + width])
    if stop == "zero" and not lo <= 0 <= lo + width:
        stop = "none"
    env = SafetyEnvelope(low, high, P, max_rate=[rate], ramp_in_s=ramp * P / 1e9)
    loop, pol = make_loop(low=low, high=high, stop_action=stop, watchdog_periods=periods, envelope=env)
    t, last_msg, last_cmd, last_cmd_t, estop = 0, None, None, None, False
    for dt, (what, arg) in events:
        t += dt
        if what == "msg":
            loop.on_message(TOPIC, obs(*arg), t)
            if len(arg) == 3:
                last_msg = (t, np.asarray(arg, np.float64))
        elif what == "estop":
            zero = loop.set_estop(arg)
            estop = arg
            if zero is not None:
                assert stop == "zero" and np.array_equal(zero, [0, 0])
                last_cmd = None
        else:
            pol.output = np.asarray(arg)
            seen = len(pol.seen)
            r = loop.tick(t)
            if r.reason == "command":
                # computed from the newest valid message, at most `periods` control periods old
                assert len(pol.seen) == seen + 1 and not estop
                assert last_msg is not None and t - last_msg[0] <= periods * P
                assert np.all(np.isfinite(last_msg[1])) and np.array_equal(pol.seen[-1], last_msg[1].astype(np.float32))
                assert np.all(np.isfinite(r.action)) and np.all(r.action >= low) and np.all(r.action <= high)
                if last_cmd is not None:  # rate limit since the previous command
                    assert np.all(np.abs(r.action - last_cmd) <= rate * (t - last_cmd_t) / 1e9 + 1e-9)
                last_cmd, last_cmd_t = r.action, t
            else:
                assert len(pol.seen) == seen  # no inference on a faulted tick
                if r.reason == "hold":
                    assert stop == "hold" and np.array_equal(r.action, last_cmd)
                    last_cmd_t = t
                elif r.action is not None:
                    assert r.reason == "stop" and stop == "zero" and np.array_equal(r.action, [0, 0])
                    last_cmd = None
                if r.reason in ("fault", "stop", "estop", "waiting"):
                    last_cmd = None if r.reason != "fault" or stop != "hold" else last_cmd


def test_watchdog_episodes_and_events():
    from smiling_ros.io.fields import FieldFault

    wd = Watchdog(P)
    waiting = FieldFault("waiting", 0, "/o:data", None, "no sample yet")
    assert wd.check(0, [waiting]) == ("waiting", None)
    state, event = wd.check(5, [])
    assert state == "ok" and "commanding" in event
    stale = FieldFault("stale", 0, "/js:position", 7_000_000_000, "newest sample 30.0 ms old (max_age 20.0 ms)")
    nan = FieldFault("nonfinite", 1, "/js:velocity[elbow]", 7_000_000_000, "element 1 is NaN")
    state, event = wd.check(P, [stale, nan])
    assert state == "fault" and event == ("fault: stale: /js:position: newest sample 30.0 ms old (max_age 20.0 ms) "
                                          "(stamp 7.000000 s) (+1 more); stopped commanding")
    assert wd.check(2 * P, [nan]) == ("fault", None)  # same episode: logged once
    state, event = wd.check(4 * P, [])
    assert state == "ok" and "after 3 periods; resumed" in event
    assert wd.episodes == 1 and dict(wd.kinds) == {"stale": 1, "nonfinite": 1}


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
    assert s.fault_action == "hold"
    s = resolve_settings(cfg, "x.safetensors", {"control_rate_hz": 250.0, "command_topic": "/c"})
    assert s.control_rate_hz == 250.0 and s.period_ns == 4_000_000 and s.command_topic == "/c"
    s = resolve_settings(write_cfg(tmp_path), "x.safetensors", {})
    assert s.control_rate_hz == 50.0  # unset everywhere: the config's rate_hz


@pytest.mark.parametrize("params,match", [
    ({"control_rate_hz": -5.0}, "parameter 'control_rate_hz': must be > 0"),
    ({"control_rate_hz": 0.0}, "parameter 'control_rate_hz'"),
    ({"steps": 0}, "parameter 'steps': must be >= 1"),
    ({"steps": "two"}, "parameter 'steps': expected an integer"),
    ({"watchdog_periods": 3}, "parameter 'watchdog_periods': a safety setting, read from the robot config only"),
    ({"stop_action": "zero"}, "parameter 'stop_action': a safety setting"),
    ({"max_rate": [1.0]}, "parameter 'max_rate': a safety setting"),
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
