"""Small helpers shared by the project's nodes: parameters declared with descriptors whose unset
values fall back to the task config, and a main loop with clean SIGINT/SIGTERM shutdown."""
from __future__ import annotations

import gc
import math
import signal
import sys
import threading
from typing import Any, Callable, Optional

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.signals import SignalHandlerOptions

from smiling_ros.errors import UserError

# name -> (python type, description)
ParamSpec = dict[str, tuple[type, str]]


def declare_params(node, spec: ParamSpec) -> None:
    """Declare every parameter of ``spec`` unset (None) with a descriptor stating its type, so a
    value given with ``-p name:=value`` or a params file overrides the config and an unset one
    means "from the config"."""
    for name, (tp, text) in spec.items():
        node.declare_parameter(name, None, ParameterDescriptor(
            description=text, dynamic_typing=True, additional_constraints=f"type: {tp.__name__}"))


def param(node, spec: ParamSpec, name: str, default: Any = None) -> Any:
    """The value of parameter ``name`` checked against its declared type, or ``default`` if unset."""
    value = node.get_parameter(name).value
    if value is None or value == "":
        return default  # unset; an empty string (e.g. a launch argument left empty) counts as unset
    tp = spec[name][0]
    if tp in (int, float) and isinstance(value, str):  # e.g. a launch argument passed as a string
        try:
            value = tp(value) if tp is float else int(float(value))
        except ValueError:
            raise UserError(f"parameter '{name}': expected {tp.__name__}, got '{value}'") from None
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if tp is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        value = list(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise UserError(f"parameter '{name}': expected {tp.__name__}, got {type(value).__name__} {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"parameter '{name}': must be finite, got {value}")
    return value


def steady_clock():
    """A steady clock for timers that must run in wall time even with ``use_sim_time`` (polling,
    real-time pacing): a timer on the node's clock would stop while /clock is silent."""
    from rclpy.clock import Clock, ClockType

    return Clock(clock_type=ClockType.STEADY_TIME)


def run_node(name: str, factory: Callable[[], Any], argv: Optional[list[str]] = None) -> int:
    """Init rclpy, build the node with ``factory()`` and spin it until SIGINT/SIGTERM or until the
    node sets ``node.done``; then call ``node.close()`` (if it has one) and shut down.

    After SIGINT, a node with a ``linger()`` method keeps spinning while it returns True (a
    simulated robot serving a trainer that writes its final checkpoint); SIGTERM ends that at
    once. The handlers stay installed until the process exits: a second SIGINT (a terminal's
    Ctrl-C and a non-interactive ``ros2 launch`` both send one) never interrupts the shutdown.

    Returns the exit status: 0, or 2 with one line on stderr for a :class:`UserError` (bad
    parameter, config or topic), never a traceback for bad input.
    """
    from smiling_ros.ros.dds_env import ensure_local_dds

    ensure_local_dds()
    args = sys.argv if argv is None else argv
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(sig, _frame) -> None:
        signals.append(sig)
        stop.set()

    try:
        rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    except Exception as exc:  # noqa: BLE001 - malformed --ros-args
        print(f"{name}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    node = None
    code = 0
    try:
        node = factory()
        executor = rclpy.executors.SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and not getattr(node, "done", False) and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
        linger = getattr(node, "linger", None)
        if signal.SIGINT in signals and callable(linger):
            while signal.SIGTERM not in signals and not getattr(node, "done", False) and rclpy.ok() and linger():
                executor.spin_once(timeout_sec=0.1)
        code = int(getattr(node, "exit_code", 0) or 0)
    except UserError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except rclpy.exceptions.ParameterException as exc:
        print(f"{name}: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        code = 2
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            try:
                if callable(close):
                    close()
            except UserError as exc:
                print(f"{name}: error: {exc}", file=sys.stderr)
                code = code or exc.exit_code
            node.destroy_node()
        else:
            # The factory raised: its half-built node (kept alive by reference cycles) must be
            # collected before the context goes, or its handles are freed after it (a crash at exit).
            gc.collect()
        if rclpy.ok():
            rclpy.shutdown()
    return code
