"""Launch actions the project's launch files share (imported by launch/*.launch.py).

`ros2 launch` exits 0 whatever its processes do, unless an exception is raised while it runs;
these handlers raise one (a one-line "Caught exception in launch: ..." and exit code 1) when a
node the launch cannot do without fails, and end the launch when its job is done.
"""
from __future__ import annotations

from launch.actions import EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown, matches_action
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition


class NodeFailed(RuntimeError):
    """A required node exited with a non-zero code, or a lifecycle node failed to configure."""


def _name(event) -> str:
    try:
        return event.action.node_name.rsplit("/", 1)[-1]  # launch_ros Node: its ROS name
    except Exception:  # noqa: BLE001 - a plain process
        return event.process_name


def _check_exit(event, context, *, shutdown_on_success: bool):
    if context.is_shutdown:
        return None  # stopping anyway (Ctrl-C, another node's exit): exit codes are the nodes' own
    name = _name(event)
    if event.returncode != 0:
        raise NodeFailed(f"{name} exited with code {event.returncode}")
    if shutdown_on_success:
        return [EmitEvent(event=Shutdown(reason=f"{name} finished"))]
    return None


def required(node, *, shutdown_on_success: bool = False) -> RegisterEventHandler:
    """``node`` exiting with a non-zero code ends the launch with exit code 1; with
    ``shutdown_on_success`` its exit ends the launch in any case (the other nodes get SIGINT)."""
    return RegisterEventHandler(OnProcessExit(
        target_action=node,
        on_exit=lambda event, context: [OpaqueFunction(
            function=lambda ctx: _check_exit(event, ctx, shutdown_on_success=shutdown_on_success))],
    ))


def _configure_failed(context, name: str):
    if not context.is_shutdown:
        raise NodeFailed(f"{name} failed to configure (its log says why)")


def lifecycle_bringup(node, name: str) -> list:
    """Configure ``node``, activate it once configured, and end the launch with exit code 1 if
    configuring fails (a controller without its policy must not look deployed)."""
    def change(transition: int) -> EmitEvent:
        return EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node), transition_id=transition))

    return [
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
            entities=[change(Transition.TRANSITION_ACTIVATE)])),
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state="configuring", goal_state="unconfigured",
            entities=[OpaqueFunction(function=lambda ctx: _configure_failed(ctx, name))])),
        node,
        change(Transition.TRANSITION_CONFIGURE),
    ]
