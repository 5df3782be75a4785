"""Launch files: structure, executables and parameters, without `launch` installed.

This test imports each launch file against a small STAND-IN for the launch modules that records
what the file builds (nodes, arguments, lifecycle events, exit handlers), then checks it against
the real package: every executable is a console script of this package, every parameter passed
(inline or in config/nodes.yaml) is one the node declares, every LaunchConfiguration refers to a
declared argument, every node's exit is watched, lifecycle nodes are configured and then
activated, and no deprecated launch API is used (the stand-in does not offer it). It runs on any
machine; test_ros2_launch.py runs the same files under the real `ros2 launch` where the launch
wheels and colcon are installed.
"""
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.ros  # the package's nodes and lifecycle_msgs (rclpy wheels), not launch

REPO = Path(__file__).resolve().parent.parent
LAUNCH_FILES = sorted((REPO / "launch").glob("*.launch.py"))
BUILTIN_PARAMS = {"use_sim_time"}


# --------------------------------------------------------------------------- the stand-in
class Recorded:
    """Any launch entity: keeps its positional and keyword arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _cls(name, base=Recorded):
    return type(name, (base,), {})


class LaunchConfiguration(Recorded):
    @property
    def name(self):
        return self.args[0]


class PathJoinSubstitution(Recorded):
    pass


class FindPackageShare(Recorded):
    pass


class LaunchDescription(Recorded):
    @property
    def entities(self):
        return list(self.args[0]) if self.args else []


class Node(Recorded):
    lifecycle = False


class LifecycleNode(Node):
    lifecycle = True


def matches_action(action):
    return ("matches_action", action)


def _install_standin(monkeypatch):
    mods = {
        "launch": {"LaunchDescription": LaunchDescription},
        "launch.actions": {n: _cls(n) for n in ("DeclareLaunchArgument", "EmitEvent", "RegisterEventHandler",
                                                 "IncludeLaunchDescription", "TimerAction", "ExecuteProcess",
                                                 "GroupAction", "LogInfo", "OpaqueFunction")},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration,
                                 "PathJoinSubstitution": PathJoinSubstitution,
                                 "PythonExpression": _cls("PythonExpression"),
                                 "TextSubstitution": _cls("TextSubstitution"),
                                 "EqualsSubstitution": _cls("EqualsSubstitution"),
                                 "NotEqualsSubstitution": _cls("NotEqualsSubstitution")},
        # LaunchConfigurationEquals/NotEquals are deprecated (EqualsSubstitution replaces them).
        "launch.conditions": {n: _cls(n) for n in ("IfCondition", "UnlessCondition")},
        "launch.events": {"matches_action": matches_action, "Shutdown": _cls("Shutdown")},
        "launch.event_handlers": {n: _cls(n) for n in ("OnProcessExit", "OnProcessStart")},
        "launch_ros": {},
        "launch_ros.actions": {"Node": Node, "LifecycleNode": LifecycleNode},
        "launch_ros.substitutions": {"FindPackageShare": FindPackageShare},
        "launch_ros.parameter_descriptions": {"ParameterValue": _cls("ParameterValue")},
        "launch_ros.event_handlers": {"OnStateTransition": _cls("OnStateTransition")},
        "launch_ros.events": {},
        "launch_ros.events.lifecycle": {"ChangeState": _cls("ChangeState")},
    }
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, m)


def _load(path, monkeypatch):
    _install_standin(monkeypatch)
    # The launch files' shared actions, imported afresh against the stand-in.
    monkeypatch.delitem(sys.modules, "smiling_ros.ros.launch_actions", raising=False)
    spec = importlib.util.spec_from_file_location(f"launchfile_{path.stem.replace('.', '_')}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.generate_launch_description()


def _walk(obj):
    """Every Recorded entity reachable from obj."""
    seen, stack = set(), [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, Recorded):
            yield o
            stack.extend(o.args)
            stack.extend(o.kwargs.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())


def _resolve_path(sub):
    parts = []
    for p in sub.args[0]:
        parts.append(str(REPO) if isinstance(p, FindPackageShare) else p)
    return Path(*parts)


def _console_scripts():
    from importlib.metadata import entry_points

    return {e.name: e.value for e in entry_points(group="console_scripts") if e.value.startswith("smiling_ros")}


def _declared(executable):
    target = _console_scripts()[executable]
    module = importlib.import_module(target.split(":")[0])
    return set(module.PARAMETERS) | BUILTIN_PARAMS


# --------------------------------------------------------------------------- the checks
def test_all_four_launch_files_exist():
    names = {p.name for p in LAUNCH_FILES}
    assert {"record_demos.launch.py", "train.launch.py", "deploy.launch.py", "demo.launch.py"} <= names


@pytest.mark.parametrize("path", LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_file_structure(path, monkeypatch):
    ld = _load(path, monkeypatch)
    assert isinstance(ld, LaunchDescription)
    entities = list(_walk(ld))
    nodes = [e for e in entities if isinstance(e, Node)]
    assert nodes, "launches no node"
    declared_args = {e.args[0] if e.args else e.kwargs["name"]
                     for e in entities if type(e).__name__ == "DeclareLaunchArgument"}
    used_args = {e.name for e in entities if isinstance(e, LaunchConfiguration)}
    assert used_args <= declared_args, f"undeclared launch arguments: {used_args - declared_args}"

    scripts = _console_scripts()
    for node in nodes:
        exe = node.kwargs["executable"]
        assert node.kwargs.get("package") == "smiling_ros"
        assert exe in scripts, f"{exe} is not a console script of smiling_ros"
        declared = _declared(exe)
        for item in node.kwargs.get("parameters", []):
            if isinstance(item, dict):
                unknown = set(item) - declared
                assert not unknown, f"{exe}: parameters not declared by the node: {unknown}"
            else:
                params_file = _resolve_path(item)
                assert params_file.exists(), params_file
                section = yaml.safe_load(params_file.read_text()).get(node.kwargs["name"], {})
                unknown = set(section.get("ros__parameters", {})) - declared
                assert not unknown, f"{params_file.name}: {exe} does not declare {unknown}"

    watched = {id(e.kwargs.get("target_action")) for e in entities if type(e).__name__ == "OnProcessExit"}
    for node in nodes:
        assert id(node) in watched, f"{node.kwargs['name']}: its exit is not handled (a failing node must end the launch)"

    for node in (n for n in nodes if n.lifecycle):
        changes = [e for e in entities if type(e).__name__ == "ChangeState"
                   and e.kwargs["lifecycle_node_matcher"] == ("matches_action", node)]
        ids = {c.kwargs["transition_id"] for c in changes}
        from lifecycle_msgs.msg import Transition

        assert Transition.TRANSITION_CONFIGURE in ids and Transition.TRANSITION_ACTIVATE in ids
        handlers = [e for e in entities if type(e).__name__ == "OnStateTransition"
                    and e.kwargs.get("target_lifecycle_node") is node]
        assert any(h.kwargs.get("goal_state") == "inactive" for h in handlers), "activate after configure"
        params = {k: v for item in node.kwargs["parameters"] if isinstance(item, dict) for k, v in item.items()}
        assert params.get("autostart") is False, "a launched lifecycle node must leave transitions to launch"


def test_nodes_yaml_sections_are_real_nodes():
    data = yaml.safe_load((REPO / "config" / "nodes.yaml").read_text())
    scripts = _console_scripts()
    for node_name, section in data.items():
        assert node_name in scripts
        assert set(section) == {"ros__parameters"}
        assert set(section["ros__parameters"]) <= _declared(node_name)
