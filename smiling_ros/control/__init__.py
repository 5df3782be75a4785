"""The ROS-free control side of deployment: settings, policy checks, the control loop with its
watchdog and statistics, real-time scheduling and background policy loading.
controller_node translates between topics and these objects."""
from smiling_ros.control.checks import (
    check_policy,
    expected_act_dim,
    load_controller_policy,
    make_assembler,
    policy_bounds,
    resolve_command,
    resolve_limits,
)
from smiling_ros.control.loader import Announced, PolicyLoader, Transferred, checkpoint_for_swap
from smiling_ros.control.loop import ControlLoop, TickResult
from smiling_ros.control.realtime import background_priority, set_sched_priority
from smiling_ros.control.settings import (
    EXECUTORS,
    ON_STALE,
    STOP_ACTIONS,
    WATCHDOG_OK,
    WATCHDOG_STALE,
    WATCHDOG_WAITING,
    ControllerSection,
    ControllerSettings,
    check_settings,
    resolve_settings,
)
from smiling_ros.control.stats import DeadlineTracker, LatencyStats
from smiling_ros.control.stream import ActionSchedule, CommandStream
from smiling_ros.control.watchdog import Watchdog

__all__ = [
    "EXECUTORS", "ON_STALE", "STOP_ACTIONS", "WATCHDOG_OK", "WATCHDOG_STALE", "WATCHDOG_WAITING",
    "ActionSchedule", "Announced", "CommandStream", "ControlLoop", "ControllerSection", "ControllerSettings", "DeadlineTracker", "LatencyStats", "PolicyLoader",
    "TickResult", "Transferred", "Watchdog", "background_priority", "check_policy", "checkpoint_for_swap", "check_settings", "expected_act_dim",
    "load_controller_policy", "make_assembler", "policy_bounds", "resolve_command", "resolve_limits", "resolve_settings",
    "set_sched_priority",
]
