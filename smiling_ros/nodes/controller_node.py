"""controller_node: a lifecycle node that runs a policy checkpoint at control rate.

    controller_node --ros-args -p config:=arm_reach -p checkpoint:=policy.safetensors

Lifecycle (``rclpy.lifecycle``; ``autostart:=true``, the default, configures and activates at
start, so no ``ros2 lifecycle`` CLI is needed; a launch file sets ``autostart:=false`` and drives
the transitions itself):

- configure: check parameters, load the checkpoint (refusing one for another robot: sizes, the
  observation fields and joint order, the command joints and meaning, the training rate), build
  the observation from the config's ``observation`` fields with the field mapping import-bag
  uses, subscribe to their topics (sensor-data QoS, which matches best-effort and reliable
  publishers) and create the command publisher (RELIABLE, depth 1).
- activate: a timer at ``control_rate_hz`` on the steady clock. Each tick: latest observation ->
  policy (source sample + BRIDGER steps inside ``act``) -> safety envelope (limits, rate limits,
  ramp-in) -> publish the command of the config's ``command.interface`` (smiling_ros.io.commands):
  Float64MultiArray for a forward controller, a JointTrajectory of the planned chunk (first point
  one policy step ahead) for a joint_trajectory_controller, a TwistStamped for MoveIt Servo. The
  action's meaning (the checkpoint's, else ``command.meaning``) must suit the interface, or
  configure fails.
- with ``command_rate_hz`` set, policy rate and command rate come apart
  (smiling_ros.control.stream): the policy plans timed chunks at ``control_rate_hz`` on a planner
  thread and the timer at ``command_rate_hz`` sends the planned action for now (interpolated), or
  the plan ahead as a trajectory.
- deactivate / shutdown / SIGINT / SIGTERM: stop the timer, publish the stop command
  (``stop_action``), then nothing.

Safety (smiling_ros.control has the rules): any observation field stale, frozen, missing a
joint, NaN/inf or out of range, or a policy failure, gives the configured stop behaviour at that
tick, logged once per fault episode with the field's name; commands resume with a ramp-in when
all inputs are fresh and valid. Safety settings are read from the robot config only.

Interfaces (names relative to the node, ``~``):
    ~/estop                   std_srvs/SetBool: true engages (one zero command if stop_action is
                              'zero', then nothing is published), false releases.
    ~/reset_stats             std_srvs/Trigger: clear latency/deadline statistics (e.g. after warm-up).
    <topics.episode>          std_msgs/String episode markers: a "start" resets the policy's state
                              (observation window, action chunk) before the next tick.
    <topics.policy>           std_msgs/String with a checkpoint path, or a JSON announcement with
                              path and sha256 (the file is hash-checked; one sent with its bytes
                              or not on this machine is awaited on .../checkpoint): loaded on a
                              background thread and
                              swapped in between two ticks; a checkpoint for another robot is
                              refused and the old policy kept.
    <topics.policy>/checkpoint
                              std_msgs/UInt8MultiArray: a checkpoint's bytes from another machine
                              (smiling_ros.learn.transfer): size limit (max_checkpoint_mb) and
                              sha256 checked, stored in checkpoint_cache, then loaded as above.
    /diagnostics              diagnostic_msgs/DiagnosticArray every diagnostics_period_s: latency
                              p50/p99, ticks, missed deadlines, fault state and the field at
                              fault, fault episodes by kind, e-stop, policy path.

Parameters left unset take the config's ``controller`` section (smiling_ros.control
.ControllerSection) and its ``topics``. Observation topics follow ROS remapping
(``-r /observation:=/robot/obs``).
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from typing import Any, Optional

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from smiling_ros.control import (
    Announced,
    CommandStream,
    ControllerSettings,
    ControlLoop,
    PolicyLoader,
    Transferred,
    checkpoint_for_swap,
    load_controller_policy,
    make_envelope,
    make_loop,
    resolve_command,
    resolve_limits,
    resolve_settings,
    safety_keys,
    set_sched_priority,
    training_spec,
)
from smiling_ros.data.episodes import parse_marker_text
from smiling_ros.errors import UserError
from smiling_ros.ros.commands import CommandOutput
from smiling_ros.ros.msgs import message_class
from smiling_ros.ros.node_utils import ParamSpec, declare_params, param
from smiling_ros.ros.qos import COMMAND, EVENTS, SENSOR
from smiling_ros.ros.transfer import blob_topic, subscribe_transfers

NODE_NAME = "controller_node"


def _parameter_table() -> ParamSpec:
    """name -> (python type, description), generated from ControllerSection: its non-safety keys
    (safety settings live in the robot config only), plus the files, topics and autostart. All
    are declared unset (None) with dynamic typing and checked at configure time, so a wrong type
    fails configure with one line, and only parameters the user set override the config."""
    import dataclasses
    import typing

    from smiling_ros.control import ControllerSection, parameter_keys
    from smiling_ros.control.settings import TOPIC_PARAMETERS

    hints = typing.get_type_hints(ControllerSection)
    fields = {f.name: f for f in dataclasses.fields(ControllerSection)}
    table: ParamSpec = {
        "config": (str, "robot/task config: a YAML path or a shipped name (arm_reach, hopper). Required."),
        "checkpoint": (str, "policy checkpoint (.safetensors) to run. Required."),
    }
    for name in parameter_keys():
        tp = hints[name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        table[name] = (args[0] if args else tp, fields[name].metadata["help"] + "; unset: the config's controller."
                       + name)
    for name, text in TOPIC_PARAMETERS.items():
        table[name] = (str, text)
    table["autostart"] = (bool, "configure and activate at start (set false when a launch file drives the lifecycle)")
    return table


PARAMETERS: ParamSpec = _parameter_table()


class ControllerNode(LifecycleNode):
    """Lifecycle node around :class:`smiling_ros.control.ControlLoop` (see module doc)."""

    def __init__(self, **kwargs: Any):
        super().__init__(NODE_NAME, **kwargs)
        declare_params(self, PARAMETERS)
        self.settings: Optional[ControllerSettings] = None
        self.loop: Optional[ControlLoop] = None
        self.configure_error: Optional[str] = None
        self.done = False
        self._estop = False
        self._active = False
        self._pub_lock = threading.Lock()  # a tick's publish and a stop command never interleave
        self._loader: Optional[PolicyLoader] = None
        self._subs: list[Any] = []
        self._out: Optional[CommandOutput] = None
        self._stream: Optional[CommandStream] = None
        self._swap_sha: Optional[str] = None
        self._timer: Any = None
        self._diag_timer: Any = None
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        self._control_group = MutuallyExclusiveCallbackGroup()
        self._estop_srv = self.create_service(SetBool, "~/estop", self._on_estop)
        self._reset_stats_srv = self.create_service(Trigger, "~/reset_stats", self._on_reset_stats)
        self._diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diag_timer = self.create_timer(1.0, self._publish_diagnostics)

    # ------------------------------------------------------------------ parameters
    def param(self, name: str, default: Any = None) -> Any:
        return param(self, PARAMETERS, name, default)

    def _user_params(self) -> dict[str, Any]:
        """Parameters the user set, type-checked; unknown overrides are an error (typos)."""
        overrides = getattr(self, "_parameter_overrides", {}) or {}
        safety = set(safety_keys())
        for name in overrides:
            if name in safety:
                raise UserError(f"parameter '{name}': a safety setting, read from the robot config only; set "
                                f"controller.{name} there")
            if not self.has_parameter(name) and not name.startswith("qos_overrides."):
                raise UserError(f"parameter '{name}': unknown (known: {', '.join(sorted(PARAMETERS))})")
        out = {}
        for name in PARAMETERS:
            if name in ("config", "checkpoint", "autostart"):
                continue
            value = param(self, PARAMETERS, name)
            if value is not None:  # unset (None or '') means "from the robot config"
                out[name] = value
        return out

    # ------------------------------------------------------------------ lifecycle
    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self._configure()
        except UserError as exc:
            self.configure_error = str(exc)
            self.get_logger().error(f"configure failed: {exc}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # noqa: BLE001 - any failure here must leave the node unconfigured, not crashed
            self.configure_error = f"{type(exc).__name__}: {exc}"
            self.get_logger().error(f"configure failed: {self.configure_error}")
            self._release()
            return TransitionCallbackReturn.FAILURE
        self.configure_error = None
        return TransitionCallbackReturn.SUCCESS

    @property
    def _configured(self) -> ControllerSettings:
        """The settings of a configured node."""
        if self.settings is None:
            raise RuntimeError("controller_node: not configured")
        return self.settings

    def _configure(self) -> None:
        s = resolve_settings(self.param("config", ""), self.param("checkpoint", ""), self._user_params())
        cfg = s.config
        if cfg is None:  # resolve_settings always reads the config
            raise UserError("parameter 'config': no config")
        if s.sched_priority:  # before the loader thread starts, so that it inherits (one step lower)
            warning = set_sched_priority(s.sched_priority)
            if warning:
                self.get_logger().warning(warning)
            else:
                self.get_logger().info(f"control loop under SCHED_FIFO priority {s.sched_priority}")
        from smiling_ros.io.fields import declared_size

        sizes = [declared_size(f) for f in cfg.observation]
        obs_dim = None if any(v is None for v in sizes) else int(sum(sizes))  # type: ignore[arg-type]
        policy = load_controller_policy(s.checkpoint, s, obs_dim)
        if training_spec(policy) is None:
            self.get_logger().warning(f"{s.checkpoint}: carries no training spec (observation fields, command "
                                      "joints, rate); only sizes were checked")
        low, high = resolve_limits(cfg, policy, s.checkpoint)
        spec = resolve_command(cfg, policy, s.checkpoint, low, high, s.period_ns / 1e9, s.command_topic)
        self.loop = make_loop(s, policy,
                              chunked=spec.interface == "joint_trajectory" or s.command_rate_hz is not None)
        if s.command_rate_hz is not None:
            period = int(round(1e9 / s.command_rate_hz))
            envelope, _ = make_envelope(s, self.loop.low, self.loop.high, period_ns=period)
            self._stream = CommandStream(self.loop, s.chunk_blend, s.ensemble_decay, on_result=self._log_result,
                                         command_period_ns=period, envelope=envelope)
        self.loop.set_estop(self._estop)
        assembler, low, high = self.loop.assembler, self.loop.low, self.loop.high
        self.settings = s
        self._obs_dim = int(policy.obs_dim)
        for topic, type_name in assembler.topics().items():
            cls = message_class(type_name)
            self._subs.append(self.create_subscription(
                cls, topic, lambda msg, t=topic: self._on_observation(t, msg), SENSOR))
        self._out = CommandOutput(self, spec, COMMAND, self.create_lifecycle_publisher, cfg.topics.joint_states,
                                  max_joint_age_s=s.watchdog_periods * s.period_ns / 1e9)
        self._subs.append(self.create_subscription(String, s.episode_topic, self._on_episode, EVENTS))
        if s.follow_announcements:
            self._loader = PolicyLoader(self._load_for_swap, self._on_policy_loaded, self._on_policy_refused)
            self._subs.append(self.create_subscription(String, s.policy_topic, self._on_announcement, EVENTS))
            self._subs.append(subscribe_transfers(self, s.policy_topic, self._on_transfer))
        self.destroy_timer(self._diag_timer)
        self._diag_timer = self.create_timer(s.diagnostics_period_s, self._publish_diagnostics)
        self.get_logger().info(
            f"configured: {s.checkpoint} ({type(policy).__name__}, obs {policy.obs_dim}, act {policy.act_dim}"
            f"{', steps ' + str(policy.steps) if hasattr(policy, 'steps') else ''}) on {s.device}; "
            f"{s.control_rate_hz:g} Hz -> {s.command_topic} ({spec.interface}, "
            f"{spec.meaning or 'meaning not declared'}); limits {low.tolist()}..{high.tolist()}; "
            f"on a fault: {s.fault_action}; max ages "
            + ", ".join(f"{assembler.field_name(i)} {_ms(assembler.max_age_ns(i))}" for i in range(len(assembler.specs)))
            + (f"; commands streamed at {s.command_rate_hz:g} Hz ({s.chunk_blend})" if self._stream else ""))

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        assert self.loop is not None and self.settings is not None
        ret = super().on_activate(state)  # activates the command publisher first
        if ret != TransitionCallbackReturn.SUCCESS:
            return ret
        self.loop.reset()
        self._active = True
        if self._stream is not None:
            self._stream.reset_stats()
            self._stream.start()
            self._timer = self.create_timer(1.0 / float(self._configured.command_rate_hz or 1.0), self._command_tick,
                                            callback_group=self._control_group, clock=self._steady)
        else:
            self._timer = self.create_timer(self.settings.period_ns / 1e9, self._tick,
                                            callback_group=self._control_group, clock=self._steady)
        self.get_logger().info("active: commanding once observations arrive")
        return ret

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._stop_loop()
        self.get_logger().info("inactive: not commanding")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._release()
        return super().on_cleanup(state)

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._stop_loop()
        self._release()
        self.done = True  # finalized: main() exits
        return super().on_shutdown(state)

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self._stop_loop()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _stop_loop(self) -> None:
        """Stop ticking and send the stop command (once) while the publisher is still active."""
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None
        if self._stream is not None:
            self._stream.stop()
        with self._pub_lock:
            if self.loop is not None and self._active:
                stop = self.loop.stop_command()
                self._publish(stop)
                if stop is not None and self._out is not None:
                    # The node may be about to exit: make sure the robot got the stop command.
                    self._out.publisher.wait_for_all_acked(Duration(seconds=0.5))
            self._active = False

    def _release(self) -> None:
        if self._loader is not None:
            self._loader.close()
            self._loader = None
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._out is not None:
            self._out.destroy(self.destroy_lifecycle_publisher)
            self._out = None
        if self._stream is not None:
            self._stream.stop()
            self._stream = None
        self.loop = None

    # ------------------------------------------------------------------ callbacks
    def _on_observation(self, topic: str, msg: Any) -> None:
        loop = self.loop
        if loop is None:
            return
        warning = loop.on_message(topic, msg, time.monotonic_ns(), self.get_clock().now().nanoseconds)
        if warning:
            self.get_logger().warning(warning, throttle_duration_sec=1.0)

    def _tick(self) -> None:
        start = time.monotonic_ns()
        loop, timer = self.loop, self._timer
        if loop is None or timer is None or not self._active:
            return
        # The timer has already advanced to its next slot: this tick was due one period before it.
        until_next = timer.time_until_next_call()
        expected = start + (until_next or 0) - timer.timer_period_ns
        with self._pub_lock:
            if not self._active:  # stopped (deactivate/shutdown) while this tick waited for the lock
                return
            r = loop.tick(start)
            if r.action is not None:
                self._publish(r.action, r.chunk)
        end = time.monotonic_ns()
        loop.record(expected, start, end, r)
        self._log_result(r)

    def _log_result(self, r: Any) -> None:
        loop = self.loop
        if loop is None:
            return
        if r.event:
            # State changes are logged, at most one per second per kind when a marginal sensor makes
            # the watchdog flap; /diagnostics carries the current state and the count.
            if r.event.startswith("fault"):  # once per fault episode, never throttled
                self.get_logger().warning(f"{r.event} (fault episodes: {loop.watchdog.episodes})")
            elif "resumed" in r.event:
                self.get_logger().info(r.event, throttle_duration_sec=1.0)
            else:
                self.get_logger().info(r.event)
        if r.warning:
            self.get_logger().warning(r.warning, throttle_duration_sec=1.0)

    def _command_tick(self) -> None:
        """A tick of the command stream (robot rate): the planned action for now, or the plan ahead."""
        start = time.monotonic_ns()
        stream, timer = self._stream, self._timer
        if stream is None or timer is None or not self._active or self._out is None:
            return
        until_next = timer.time_until_next_call()
        expected = start + (until_next or 0) - timer.timer_period_ns
        trajectory = self._out.spec.interface == "joint_trajectory"
        with self._pub_lock:
            if not self._active:
                return
            kind, value = stream.next_command(start, points=trajectory)
            if kind == "command" and trajectory:
                acts, times = value
                self._publish(acts[0], acts, times)
            elif kind != "none":
                self._publish(value)
        stream.record(expected, start, time.monotonic_ns(), kind != "none")

    def _publish(self, action: Any, chunk: Any = None, times_s: Any = None) -> None:
        out = self._out
        if action is None or out is None:
            return
        try:
            sent = out.send(action, chunk, times_s)
        except UserError as exc:
            sent, out.last_warning = False, str(exc)
        if not sent and out.last_warning:
            self.get_logger().warning(out.last_warning, throttle_duration_sec=1.0)

    def _on_estop(self, request: SetBool.Request, response: SetBool.Response) -> SetBool.Response:
        engage = bool(request.data)
        with self._pub_lock:
            self._estop = engage
            if self.loop is not None:
                stop = self.loop.set_estop(engage)
                if engage and self._stream is not None:
                    self._stream.clear()
                if self._active:
                    self._publish(stop)
        if engage:
            self.get_logger().warning("e-stop engaged: not commanding until released")
            response.message = "e-stop engaged"
        else:
            self.get_logger().info("e-stop released")
            response.message = "e-stop released"
        response.success = True
        return response

    def _on_episode(self, msg: String) -> None:
        marker = parse_marker_text(msg.data)
        if marker is not None and marker["event"] == "start" and self.loop is not None:
            self.loop.request_reset()  # a new episode: forget observation windows / action chunks

    def _on_reset_stats(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        if self.loop is not None:
            self.loop.reset_stats()
        if self._stream is not None:
            self._stream.reset_stats()
        response.success = self.loop is not None
        response.message = "statistics cleared" if self.loop is not None else "not configured"
        return response

    # ------------------------------------------------------------------ hot swap
    def _on_announcement(self, msg: String) -> None:
        from pathlib import Path

        from smiling_ros.learn.transfer import parse_announcement

        try:
            ann = parse_announcement(msg.data)
        except UserError as exc:
            self.get_logger().error(f"hot swap refused: {exc}")
            return
        path = ann["path"]
        if not path or self._loader is None:
            return
        if ann["transfer"] or (ann["sha256"] and not Path(path).exists()):
            # Its bytes come on .../checkpoint: those are loaded, never a path on another machine.
            where = "sent with its bytes" if ann["transfer"] else "not on this machine"
            self.get_logger().info(f"policy announced: {path} {where}; waiting for its transfer "
                                   f"on {blob_topic(self._configured.policy_topic)}")
            return
        self.get_logger().info(f"policy announced: {path}; loading")
        self._loader.request(Announced(path, ann["sha256"]))

    def _on_transfer(self, data: Any) -> None:
        if self._loader is not None:
            self.get_logger().info(f"checkpoint received on {blob_topic(self._configured.policy_topic)} "
                                   f"({len(data)} bytes); verifying")
            self._loader.request(Transferred(data, blob_topic(self._configured.policy_topic)))

    def _load_for_swap(self, item: Any) -> Any:
        s, loop = self.settings, self.loop
        if s is None or loop is None:
            raise UserError(f"{item}: not configured")
        path, sha = checkpoint_for_swap(item, int(s.max_checkpoint_mb * 1e6), s.checkpoint_cache)
        if sha is not None and sha == self._swap_sha:
            return None  # the same checkpoint announced twice (by path and by transfer)
        policy = load_controller_policy(path, s, self._obs_dim)
        if int(policy.act_dim) != loop.act_dim:
            raise UserError(f"{path}: checkpoint for another robot: act_dim is {policy.act_dim} but the limits "
                            f"have {loop.act_dim} elements")
        if s.config is None:
            raise UserError(f"{path}: not configured")
        resolve_command(s.config, policy, path, loop.low, loop.high, s.period_ns / 1e9, s.command_topic)
        self._swap_sha = sha
        return policy, path

    def _on_policy_loaded(self, policy: Any, path: str) -> None:
        loop = self.loop
        if loop is not None:
            loop.offer_policy(policy, path)
            self.get_logger().info(f"policy {path} loaded; swapping at the next tick")

    def _on_policy_refused(self, path: str, reason: str) -> None:
        old = self.loop.policy_path if self.loop is not None else "none"
        self.get_logger().error(f"hot swap refused: {reason}; keeping {old}")

    # ------------------------------------------------------------------ diagnostics
    def _publish_diagnostics(self) -> None:
        status = DiagnosticStatus(name=f"{self.get_name()}: control loop", hardware_id=self.get_fully_qualified_name())
        loop = self.loop
        if loop is None:
            status.level = DiagnosticStatus.ERROR if self.configure_error else DiagnosticStatus.WARN
            status.message = f"configure failed: {self.configure_error}" if self.configure_error else "not configured"
        else:
            d = loop.diagnostics()
            if d["estop"]:
                status.level, status.message = DiagnosticStatus.WARN, "e-stop engaged"
            elif not self._active:
                status.level, status.message = DiagnosticStatus.WARN, "inactive"
            elif d["watchdog"] != "ok":
                status.level = DiagnosticStatus.WARN
                what = "holding the last command" if self._configured.fault_action == "hold" else "not commanding"
                status.message = f"{d['watchdog']}: {what}" + (f" ({d['fault']})" if d["fault"] else "")
            else:
                status.level = DiagnosticStatus.OK
                status.message = f"commanding at {d['achieved_rate_hz']:.1f} Hz"
            if self._stream is not None:
                d.update(self._stream.diagnostics())
                if status.level == DiagnosticStatus.OK:
                    status.message = f"commanding at {d['command_rate_hz']:.1f} Hz (policy {d['achieved_rate_hz']:.1f} Hz)"
            d["active"] = self._active
            d["control_rate_hz"] = self.settings.control_rate_hz if self.settings else float("nan")
            status.values = [KeyValue(key=k, value=_fmt(v)) for k, v in d.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def _ms(ns: Optional[int]) -> str:
    return "no limit" if ns is None else f"{ns / 1e6:.0f} ms"


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def make_executor(kind: str, context: Any = None) -> tuple[Any, str]:
    """The executor named by ``kind`` (see ControllerSection.executor) and the kind used."""
    if kind in ("events", "auto"):
        try:
            from rclpy.experimental import EventsExecutor
        except ImportError:  # rclpy before Jazzy
            if kind == "events":
                raise UserError("parameter 'executor': 'events' needs rclpy's EventsExecutor (rclpy.experimental, "
                                "ROS 2 Jazzy or later); use 'single'") from None
        else:
            return EventsExecutor(context=context), "events"
    if kind == "multi":
        return rclpy.executors.MultiThreadedExecutor(num_threads=2, context=context), "multi"
    return rclpy.executors.SingleThreadedExecutor(context=context), "single"


def main(argv: Optional[list[str]] = None) -> int:
    """Console script ``controller_node``; returns the exit status (2: bad parameters)."""
    from smiling_ros.learn.runtime import limit_threads

    limit_threads()
    from smiling_ros.ros.dds_env import ensure_local_dds

    ensure_local_dds()
    # Hand Python's GIL to a waiting thread after 0.1 ms instead of 5 ms, so the control tick
    # never waits long behind a checkpoint being loaded for a hot swap.
    sys.setswitchinterval(1e-4)
    args = sys.argv if argv is None else argv
    stop = threading.Event()
    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # noqa: BLE001 - malformed --ros-args
        print(f"{NODE_NAME}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    node = None
    try:
        try:
            node = ControllerNode()
        except Exception as exc:  # noqa: BLE001 - e.g. an unparsable parameter override
            print(f"{NODE_NAME}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 2
        try:
            autostart = node.param("autostart", True)
        except UserError as exc:
            node.get_logger().error(str(exc))
            return 2
        if autostart:
            if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
                return 2  # on_configure logged the one line saying why
            node.trigger_activate()
        try:
            kind = node.settings.executor if node.settings else node.param("executor", "auto")
            if not node.settings and node.param("sched_priority", 0):
                # Configured later (launch file): the executor's threads get the priority now.
                warning = set_sched_priority(node.param("sched_priority", 0))
                if warning:
                    node.get_logger().warning(warning)
            executor, kind = make_executor(kind)
        except UserError as exc:
            node.get_logger().error(str(exc))
            return 2
        node.get_logger().debug(f"executor: {kind}")
        executor.add_node(node)
        while not stop.is_set() and not node.done and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        if not node.done and node._state_machine.current_state[1] in ("active", "inactive", "unconfigured"):
            node.trigger_shutdown()  # publishes the stop command when active
        return 0
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    sys.exit(main())
