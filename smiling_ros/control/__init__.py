"""The ROS-free control side of deployment: settings, policy checks, the control loop with its
watchdog and statistics, real-time scheduling and background policy loading.
controller_node translates between topics and these objects. :class:`SafetyEnvelope` is the one
place commands are limited (limits, rate limits, ramp-in, distance from the measured position):
anything that sends commands to the robot passes each one through it."""
from smiling_ros.control.checks import (
    check_policy,
    check_spec,
    expected_act_dim,
    load_controller_policy,
    make_assembler,
    make_envelope,
    make_loop,
    policy_bounds,
    resolve_command,
    resolve_limits,
    training_spec,
)
from smiling_ros.control.envelope import SafetyEnvelope
from smiling_ros.control.loader import Announced, PolicyLoader, Transferred, checkpoint_for_swap
from smiling_ros.control.loop import ControlLoop, TickResult
from smiling_ros.control.realtime import background_priority, set_sched_priority
from smiling_ros.control.settings import (
    EXECUTORS,
    ON_STALE,
    STOP_ACTIONS,
    WATCHDOG_FAULT,
    WATCHDOG_OK,
    WATCHDOG_WAITING,
    ControllerSection,
    ControllerSettings,
    check_settings,
    parameter_keys,
    resolve_settings,
    safety_keys,
)
from smiling_ros.control.stats import DeadlineTracker, LatencyStats
from smiling_ros.control.stream import ActionSchedule, CommandStream
from smiling_ros.control.watchdog import Watchdog

__all__ = [
    "EXECUTORS", "ON_STALE", "STOP_ACTIONS", "WATCHDOG_FAULT", "WATCHDOG_OK", "WATCHDOG_WAITING",
    "ActionSchedule", "Announced", "CommandStream", "ControlLoop", "ControllerSection", "ControllerSettings",
    "DeadlineTracker", "LatencyStats", "PolicyLoader", "SafetyEnvelope", "TickResult", "Transferred", "Watchdog",
    "background_priority", "check_policy", "check_settings", "check_spec", "checkpoint_for_swap", "expected_act_dim",
    "load_controller_policy", "make_assembler", "make_envelope", "make_loop", "parameter_keys", "policy_bounds",
    "resolve_command", "resolve_limits", "resolve_settings", "safety_keys", "training_spec",
    "set_sched_priority",
]
