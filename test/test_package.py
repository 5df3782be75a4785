"""The package installs both ways: as an ament_python package (colcon) and with pip."""
import configparser
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NODES = ["sim_node", "recorder_node", "trainer_node", "controller_node"]


def test_package_xml_is_format3_ament_python():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3"
    assert root.findtext("name") == "smiling_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.findall("exec_depend")}
    for dep in ("rclpy", "std_msgs", "sensor_msgs", "std_srvs", "diagnostic_msgs", "lifecycle_msgs", "launch_ros"):
        assert dep in deps, dep
    assert (REPO / "resource" / "smiling_ros").exists()


def test_setup_cfg_puts_scripts_under_lib_for_ros2_run():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    assert cfg["install"]["install_scripts"] == "$base/lib/smiling_ros"
    assert cfg["develop"]["script_dir"] == "$base/lib/smiling_ros"


def test_console_scripts_are_installed_and_importable():
    from importlib.metadata import entry_points

    eps = {e.name: e for e in entry_points(group="console_scripts") if e.value.startswith("smiling_ros")}
    assert set(NODES) | {"smiling-ros"} <= set(eps)
    for name in NODES:
        assert callable(eps[name].load()), name
    out = subprocess.run([sys.executable, "-m", "smiling_ros.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "import-bag" in out.stdout


CORE = ("data", "learn", "methods", "io", "control", "envs", "config.py", "errors.py", "paths.py", "__init__.py")
ROS_MODULE = re.compile(r"^(rclpy|rosidl_\w+|launch\w*|\w+_msgs|\w+_srvs|\w+_interfaces|smiling_ros\.(ros|nodes))(\.|$)")
UPWARD = re.compile(r"^smiling_ros\.(commands|cli|nodes)(\.|$)")


def _imports(path):
    """Every module a file imports, at module level or inside functions (absolute names)."""
    import ast

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_core_has_no_ros_import():
    """The core (data, learn, methods, io, control, envs and the top-level modules) stays usable
    without ROS: no rclpy, message/service packages, launch, smiling_ros.ros or smiling_ros.nodes,
    not even inside a function; and it never imports the layers above it (commands, CLI, nodes)."""
    offenders = []
    for f in sorted((REPO / "smiling_ros").rglob("*.py")):
        rel = f.relative_to(REPO / "smiling_ros").parts
        if rel[0] not in CORE:
            continue
        for mod in _imports(f):
            if ROS_MODULE.match(mod) or UPWARD.match(mod):
                offenders.append(f"{'/'.join(rel)}: {mod}")
    assert not offenders, offenders


def test_layering_guard_catches_a_lazy_ros_import(tmp_path):
    """The guard itself: a message import inside a function of a core module is seen."""
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from std_msgs.msg import String\n    import smiling_ros.ros.qos\n")
    found = [m for m in _imports(f) if ROS_MODULE.match(m)]
    assert found == ["std_msgs.msg", "smiling_ros.ros.qos"]


@pytest.mark.skipif(shutil.which("colcon") is None and not Path(sys.prefix, "bin", "colcon").exists(),
                    reason="colcon not installed")
@pytest.mark.slow
def test_colcon_build_installs_ament_layout(tmp_path):
    """`colcon build` in a ROS 2 workspace: executables under lib/smiling_ros (for `ros2 run`),
    launch/config/sim under share/smiling_ros, and the ament index marker."""
    colcon = shutil.which("colcon") or str(Path(sys.prefix, "bin", "colcon"))
    ws = tmp_path / "ws"
    (ws / "src").mkdir(parents=True)
    src = ws / "src" / "smiling_ros"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "install", "log", "runs",
                                                             "*.egg-info", "__pycache__", ".pytest_cache"))
    r = subprocess.run([colcon, "build", "--base-paths", "src"], cwd=ws, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    inst = ws / "install" / "smiling_ros"
    for exe in NODES + ["smiling-ros"]:
        assert (inst / "lib" / "smiling_ros" / exe).exists(), exe
    share = inst / "share" / "smiling_ros"
    assert (share / "package.xml").exists()
    assert list((share / "launch").glob("*.launch.py"))
    assert (share / "config" / "arm_reach.yaml").exists()
    assert (share / "sim" / "arm_reach.xml").exists()
    assert (inst / "share" / "ament_index" / "resource_index" / "packages" / "smiling_ros").exists()
