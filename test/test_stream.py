"""Policy rate and command rate apart (smiling_ros.control.stream), without ROS: timed actions,
interpolation, receding horizon vs temporal ensembling, latency compensation, stops, and a
command served while inference is running."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from smiling_ros.control import ActionSchedule, CommandStream, ControlLoop
from smiling_ros.data.dataset import Normalizer
from smiling_ros.errors import UserError
from smiling_ros.io.fields import VectorAssembler
from smiling_ros.config import FieldSpec
from smiling_ros.learn.policy import MlpActor, MlpPolicy

MS = 1_000_000
STEP = 10 * MS


def chunk(*rows):
    return np.array(rows, np.float64)


def test_actions_carry_their_time_and_are_interpolated():
    s = ActionSchedule(2, STEP)
    s.add(0, chunk([0, 0], [1, 2], [2, 4]), now_ns=2 * MS)
    assert np.allclose(s.sample(0), [0, 0])
    assert np.allclose(s.sample(5 * MS), [0.5, 1.0])
    assert np.allclose(s.sample(15 * MS), [1.5, 3.0])
    assert np.allclose(s.sample(25 * MS), [2, 4])  # after the last: held for one more step ...
    assert np.allclose(s.sample(35 * MS), [2, 4])
    assert s.sample(40 * MS) is None  # ... then nothing: no command from an old plan
    acts, times = s.points(12 * MS)
    assert np.allclose(acts, [[1, 2], [2, 4]]) and np.allclose(times, [-0.002, 0.008])


def test_latency_compensation_drops_actions_whose_time_has_passed():
    s = ActionSchedule(1, STEP)
    dropped = s.add(0, chunk([0], [1], [2], [3]), now_ns=25 * MS)  # inference took 25 ms
    assert dropped == 2 and s.dropped == 2
    assert np.allclose(s.sample(25 * MS), [2.5])  # action 2 is for 20 ms, action 3 for 30 ms
    assert s.add(0, chunk([9]), now_ns=10 * MS) == 1  # a chunk of one returned a step late: dropped


def test_receding_horizon_replaces_the_old_plan_from_the_new_chunks_first_action():
    s = ActionSchedule(1, STEP, "replace")
    s.add(0, chunk([0], [1], [2], [3]), now_ns=1 * MS)
    s.add(STEP, chunk([10], [11], [12]), now_ns=11 * MS)
    assert np.allclose(s.sample(5 * MS), [5.0])  # slot 0 from the old plan, slot 1 from the new one
    assert np.allclose(s.sample(STEP), [10]) and np.allclose(s.sample(3 * STEP), [12])


@pytest.mark.parametrize("decay", [0.01, 0.5, -0.5])
def test_temporal_ensembling_weights_predictions_as_act(decay):
    s = ActionSchedule(1, STEP, "ensemble", decay)
    s.add(0, chunk([0], [1], [2]), now_ns=1 * MS)
    s.add(STEP, chunk([3], [5]), now_ns=11 * MS)
    s.add(2 * STEP, chunk([7]), now_ns=21 * MS)
    w = [math.exp(-decay * i) for i in range(3)]  # i = 0: the oldest prediction
    assert np.allclose(s.sample(STEP), (1 * w[0] + 3 * w[1]) / (w[0] + w[1]))
    assert np.allclose(s.sample(2 * STEP), (2 * w[0] + 5 * w[1] + 7 * w[2]) / sum(w))


def test_bad_options_are_refused():
    with pytest.raises(UserError, match="'replace' or 'ensemble'"):
        ActionSchedule(1, STEP, "average")


# --------------------------------------------------------------------------- the stream around a loop
class Clock:
    def __init__(self):
        self.t = 0

    def __call__(self):
        return self.t


def make_loop(policy, clock, watchdog_periods=2):
    asm = VectorAssembler([FieldSpec(topic="/obs", type="std_msgs/msg/Float64MultiArray", size=3)],
                          period_s=STEP / 1e9, stale_periods=watchdog_periods)
    return ControlLoop(policy, asm, -np.ones(2), np.ones(2), STEP, watchdog_periods, "stop", "zero",
                       chunked=True), asm


class Msg:
    def __init__(self, data):
        self.data = data


def constant_policy(value):
    import torch

    a = MlpActor(3, 2, [4])
    with torch.no_grad():
        a.mu.weight.zero_()
        a.mu.bias.copy_(torch.atanh(torch.tensor(value, dtype=torch.float32)))
    return MlpPolicy(a, Normalizer.identity(3), -np.ones(2), np.ones(2))


def test_stream_commands_from_plans_and_stops_at_once_on_stale_input():
    clock = Clock()
    loop, _ = make_loop(constant_policy([0.5, -0.25]), clock)
    stream = CommandStream(loop, clock=clock, command_period_ns=2 * MS)
    assert stream.next_command(0) == ("none", None)
    loop.on_message("/obs", Msg([0.1, 0.2, 0.3]), 0)
    clock.t = 1 * MS
    r = stream.plan_once(0)
    assert r.reason == "command"
    kind, a = stream.next_command(4 * MS)
    assert kind == "command" and np.allclose(a, [0.5, -0.25], atol=1e-6)
    # No new observation: after watchdog_periods the loop goes stale; the plan is cleared at once and
    # the stop command goes out on the next command tick, then nothing.
    clock.t = 31 * MS
    r = stream.plan_once(30 * MS)
    assert r.reason == "stop"
    kind, stop = stream.next_command(32 * MS)
    assert kind == "stop" and np.allclose(stop, [0, 0])
    assert stream.next_command(34 * MS) == ("none", None)


def test_a_command_is_served_while_inference_is_running():
    """A policy whose inference blocks until released (a slow network): the command side still
    answers from the plan it has."""
    started, release = threading.Event(), threading.Event()
    inner = constant_policy([0.2, 0.2])

    class SlowPolicy:  # a real policy whose act() takes as long as the test wants
        obs_dim, act_dim = 3, 2

        def __init__(self):
            self.slow = False

        def act(self, obs):
            if self.slow:
                started.set()
                release.wait(10)
            return inner.act(obs)

        def reset(self):
            pass

    pol = SlowPolicy()
    clock = Clock()
    loop, _ = make_loop(pol, clock, watchdog_periods=100)
    stream = CommandStream(loop, clock=clock)
    loop.on_message("/obs", Msg([0.0, 0.0, 0.0]), 0)
    stream.plan_once(0)
    pol.slow = True
    t = threading.Thread(target=stream.plan_once, args=(STEP,))
    t.start()
    assert started.wait(10)
    kind, a = stream.next_command(5 * MS)  # inference in progress on the other thread
    assert kind == "command" and np.allclose(a, [0.2, 0.2], atol=1e-6)
    release.set()
    t.join(10)


def test_every_streamed_command_passes_the_envelope_at_the_command_rate():
    """Rate limit per second of command time and a ramp-in after every restart of commanding,
    for sampled commands and for a trajectory's points."""
    from smiling_ros.control.envelope import SafetyEnvelope

    clock = Clock()
    loop, _ = make_loop(constant_policy([0.8, -0.8]), clock, watchdog_periods=100)
    env = SafetyEnvelope(-np.ones(2), np.ones(2), 2 * MS, max_rate=[1.0], ramp_in_s=0.1)
    stream = CommandStream(loop, clock=clock, command_period_ns=2 * MS, envelope=env)
    loop.on_message("/obs", Msg([0.0, 0.0, 0.0]), 0)
    clock.t = 1 * MS
    assert stream.plan_once(0).reason == "command"
    prev, t = np.zeros(2), 2 * MS
    for _ in range(40):
        if t % STEP == 0:  # the planner's ticks, with a fresh observation each
            loop.on_message("/obs", Msg([0.0, 0.0, 0.0]), t)
            clock.t = t
            stream.plan_once(t)
        kind, a = stream.next_command(t)
        assert kind == "command"
        assert np.all(np.abs(a - prev) <= 1.0 * 2e-3 + 1e-12), (a, prev)  # 1 /s over 2 ms
        prev, t = a, t + 2 * MS
    assert 0 < abs(prev[0]) < 0.8  # still ramping / rate-limited, not at the planned 0.8
    # A trajectory's later points are limited at their own times, and the first commits the state.
    acts, times = stream.next_command(t, points=True)[1]
    steps = np.abs(np.diff(np.vstack([prev, acts]), axis=0))
    dts = np.diff(np.concatenate([[(t - 2 * MS) / 1e9], t / 1e9 + np.maximum(times, 0)]))
    assert np.all(steps <= dts[:, None] * 1.0 + 1e-9)
    # After a clear (e-stop), commanding restarts with a ramp from zero.
    stream.clear()
    t = (t // STEP + 1) * STEP
    loop.on_message("/obs", Msg([0.0, 0.0, 0.0]), t)
    clock.t = t
    stream.plan_once(t)
    kind, a = stream.next_command(t + 2 * MS)
    assert kind == "command" and np.all(np.abs(a) <= 1.0 * 2e-3 + 1e-12)


def test_an_input_going_stale_between_policy_ticks_stops_the_stream_at_the_next_command():
    clock = Clock()
    loop, _ = make_loop(constant_policy([0.5, 0.5]), clock, watchdog_periods=2)
    chunk_loop = CommandStream(loop, clock=clock, command_period_ns=2 * MS)
    loop.on_message("/obs", Msg([0.1, 0.2, 0.3]), 0)
    clock.t = 1 * MS
    chunk_loop.plan_once(0)
    assert chunk_loop.next_command(2 * MS)[0] == "command"
    # No observation since t=0: past its maximum age (2 periods) the command side stops by itself,
    # without waiting for the planner's next tick.
    kind, stop = chunk_loop.next_command(21 * MS)
    assert kind == "stop" and np.allclose(stop, 0)
    assert chunk_loop.next_command(23 * MS) == ("none", None)
    assert chunk_loop.input_stops == 1
