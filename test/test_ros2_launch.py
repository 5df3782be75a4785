"""Every launch file under the real `ros2 launch`, as a user runs it.

The package is built with `colcon build` into a workspace; each test starts
`ros2 launch smiling_ros <file> ...` (launch_pytest runs it as a process of the test's launch
service) and checks from a separate ROS node in this process what a user would see: the nodes
in the graph, the controller's lifecycle state, the parameters the nodes received (launch
arguments and config/nodes.yaml), commands on the command topic, the launch's exit code, and a
clean shutdown on Ctrl-C (SIGINT to `ros2 launch` and every process under it, as a terminal sends
it). Needs the launch/ros2cli wheels (../shared/ros2-cli-wheels, installed by ./run) and colcon;
test_launch_files.py checks the same files' structure everywhere else.

Waits have generous upper bounds (the machine may be loaded); nothing here measures speed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, ros_available


def _missing() -> str:
    if not ros_available():
        return "rclpy wheels / ROS 2 not installed"
    for mod in ("launch", "launch_ros", "launch_pytest", "ros2launch"):
        if importlib.util.find_spec(mod) is None:
            return (f"'{mod}' not installed: the real ros2 launch needs the launch/ros2cli wheels "
                    "(../shared/ros2-cli-wheels; ./run installs them where that folder exists)")
    if shutil.which("colcon") is None and not Path(sys.prefix, "bin", "colcon").exists():
        return "colcon not installed: `ros2 launch` finds the package through a colcon install space"
    return ""


MISSING = _missing()
if MISSING:
    pytest.skip(MISSING, allow_module_level=True)

import launch_pytest  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
import yaml  # noqa: E402
from launch.actions import ExecuteProcess  # noqa: E402

from launch import LaunchDescription  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.slow]

ROS2 = str(Path(sys.prefix, "bin", "ros2")) if Path(sys.prefix, "bin", "ros2").exists() else "ros2"
CMD_TOPIC = "/forward_command_controller/commands"
WAIT = 180.0  # upper bound for anything to happen (start-up imports torch in every node)


# --------------------------------------------------------------------------- the workspace
@pytest.fixture(scope="module")
def install(tmp_path_factory) -> dict[str, str]:
    """`colcon build` of this repository; the environment that makes `ros2 launch` find it."""
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(REPO, ws / "src" / "smiling_ros", ignore=shutil.ignore_patterns(
        ".venv*", ".git", "build", "install", "log", "runs", "*.egg-info", "__pycache__", ".pytest_cache",
        ".hypothesis", "bench", "test"))
    colcon = shutil.which("colcon") or str(Path(sys.prefix, "bin", "colcon"))
    r = subprocess.run([colcon, "build", "--base-paths", "src"], cwd=ws, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    prefix = ws / "install" / "smiling_ros"
    site = next(prefix.glob("lib/python3*/site-packages"))
    return {
        "AMENT_PREFIX_PATH": os.pathsep.join(filter(None, [str(prefix), os.environ.get("AMENT_PREFIX_PATH")])),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """A policy for the arm task, a tiny SMILING config and three scripted demonstrations."""
    import torch

    from smiling_ros.data.dataset import Dataset, Normalizer
    from smiling_ros.envs import ARM_REACH, make_env, scripted_expert
    from smiling_ros.learn.policy import MlpActor, MlpPolicy

    d = tmp_path_factory.mktemp("launch_files")
    env = make_env(ARM_REACH, seed=0)
    obs_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    torch.manual_seed(0)
    MlpPolicy(MlpActor(obs_dim, act_dim, [8]), Normalizer.identity(obs_dim), -np.ones(act_dim),
              np.ones(act_dim)).save(d / "policy.safetensors")
    eps = []
    for i in range(3):
        obs, _ = env.reset(seed=i)
        ex = scripted_expert(env, seed=i)
        ex.reset(obs)
        o, a = [], []
        for _ in range(40):
            act = ex.act(obs)
            o.append(obs)
            a.append(act)
            obs, *_ = env.step(act)
        eps.append((np.array(o), np.array(a, np.float32)))
    Dataset.from_episodes(eps, {"task": ARM_REACH, "rate_hz": 20.0}).save(d / "demos")
    data = yaml.safe_load((REPO / "config" / "arm_reach.yaml").read_text())
    data["task"]["max_episode_steps"] = 40
    data["smiling"] = {
        "total_steps": 100, "T": 100, "K": 2, "score_hidden": 32, "score_batch": 64, "expert_steps": 50,
        "learner_every": 50, "learner_states": 128, "learner_fifo": 1000, "min_demo_states": 50,
        "eval_every": 1000, "eval_episodes": 0, "checkpoint_every": 50, "log_every": 20,
        "sac": {"hidden": [32, 32], "batch_size": 32, "buffer_size": 2000, "learning_starts": 20},
    }
    (d / "tiny.yaml").write_text(yaml.safe_dump(data))
    return {"dir": str(d), "policy": str(d / "policy.safetensors"), "config": str(d / "tiny.yaml"),
            "demos": str(d / "demos")}


def ros2_launch(install: dict, launch_file: str, **args) -> ExecuteProcess:
    # launch's SIGINT grace period (SIGTERM after it) is 5 s by default; a loaded machine gets
    # more here, so that what is checked is the order of shutdown, not the machine's speed.
    args.setdefault("sigterm_timeout", 30)
    return ExecuteProcess(
        cmd=[ROS2, "launch", "smiling_ros", launch_file, *(f"{k}:={v}" for k, v in args.items())],
        additional_env=install, cached_output=True, output="screen", name=launch_file,
        sigterm_timeout="30")


def launch_with(proc: ExecuteProcess) -> LaunchDescription:
    return LaunchDescription([proc, launch_pytest.actions.ReadyToTest()])


# --------------------------------------------------------------------------- helpers
def output(proc: ExecuteProcess) -> str:
    return proc.get_stdout() + proc.get_stderr()


def wait_exit(proc: ExecuteProcess, timeout: float = WAIT) -> int:
    deadline = time.monotonic() + timeout
    while proc.return_code is None:
        assert time.monotonic() < deadline, f"ros2 launch still running after {timeout} s:\n{output(proc)[-3000:]}"
        time.sleep(0.1)
    return proc.return_code


def ctrl_c(proc: ExecuteProcess) -> None:
    """SIGINT to `ros2 launch` and every process under it at once, as a terminal's Ctrl-C."""
    root = psutil.Process(proc.process_details["pid"])
    for p in [root, *root.children(recursive=True)]:
        try:
            p.send_signal(signal.SIGINT)
        except psutil.Error:
            pass


def assert_no_leftovers(proc: ExecuteProcess) -> None:
    """No node of this launch is still running (launch reaps its processes before it exits)."""
    mine = [p for p in psutil.Process().children(recursive=True)
            if any("smiling_ros" in part for part in _cmdline(p))]
    assert not mine, [" ".join(_cmdline(p)[:3]) for p in mine]


def _cmdline(p) -> list[str]:
    try:
        return p.cmdline()
    except psutil.Error:
        return []


class Probe:
    """A ROS node in this process (own context) that looks at the launched system."""

    def __init__(self):
        import rclpy

        self.ctx = rclpy.Context()
        rclpy.init(args=[], context=self.ctx)
        self.node = rclpy.create_node(f"launch_probe_{os.getpid()}", context=self.ctx,
                                      use_global_arguments=False, start_parameter_services=False)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.ctx)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.messages: dict[str, list] = {}
        self.running = True
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _spin(self):
        while self.running:
            self.executor.spin_once(timeout_sec=0.05)

    def close(self):
        self.running = False
        self.thread.join(2)
        self.node.destroy_node()
        self.ctx.try_shutdown()

    def until(self, pred, what: str, proc: ExecuteProcess, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while True:
            value = pred()
            if value:
                return value
            assert proc.return_code is None, f"ros2 launch exited ({proc.return_code}) while waiting for " \
                                              f"{what}:\n{output(proc)[-3000:]}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{output(proc)[-3000:]}"
            time.sleep(0.1)

    def node_names(self) -> list[str]:
        return [n for n in self.node.get_node_names() if not n.startswith("launch_probe_")]

    def _call(self, srv_type, name: str, request, timeout: float = 10.0):
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                return None
            future = client.call_async(request)
            deadline = time.monotonic() + timeout
            while not future.done() and time.monotonic() < deadline:
                time.sleep(0.02)
            return future.result() if future.done() else None
        finally:
            self.node.destroy_client(client)

    def lifecycle_state(self, node: str) -> str | None:
        from lifecycle_msgs.srv import GetState

        r = self._call(GetState, f"/{node}/get_state", GetState.Request())
        return None if r is None else r.current_state.label

    def params(self, node: str, names: list[str]) -> dict:
        from rcl_interfaces.srv import GetParameters
        from rclpy.parameter import parameter_value_to_python

        r = self._call(GetParameters, f"/{node}/get_parameters", GetParameters.Request(names=names))
        assert r is not None, f"/{node}/get_parameters did not answer"
        return {n: parameter_value_to_python(v) for n, v in zip(names, r.values)}

    def subscribe(self, topic: str, msg_type) -> list:
        from smiling_ros.ros.qos import SENSOR

        out = self.messages.setdefault(topic, [])

        def on_msg(msg):
            with self.lock:
                out.append(msg)

        self.node.create_subscription(msg_type, topic, on_msg, SENSOR)
        return out


@pytest.fixture
def probe():
    p = Probe()
    yield p
    p.close()


# --------------------------------------------------------------------------- record_demos
@pytest.fixture
def record_proc(install, tmp_path):
    return ros2_launch(install, "record_demos.launch.py", output=tmp_path / "bag", episodes=2, time_scale=4.0)


@launch_pytest.fixture
def record_launch(record_proc):
    return launch_with(record_proc)


@pytest.mark.launch(fixture=record_launch)
def test_record_demos_records_the_episodes_and_ends_by_itself(record_proc, tmp_path):
    assert wait_exit(record_proc) == 0, output(record_proc)[-3000:]
    out = output(record_proc)
    summary = json.loads(next(ln for ln in out.splitlines() if "RECORDED " in ln).split("RECORDED ", 1)[1])
    assert summary["output"] == str(tmp_path / "bag") and summary["storage"] == "mcap"  # launch arguments
    assert summary["episodes"] == 2
    # Read back independently of the project: the bag holds both episodes' end markers.
    from rosbags.highlevel import AnyReader

    with AnyReader([tmp_path / "bag"]) as reader:
        conns = [c for c in reader.connections if c.topic == "/smiling_ros/episode"]
        ends = [m for m in (json.loads(reader.deserialize(raw, c.msgtype).data)
                            for c, _, raw in reader.messages(connections=conns)) if m["event"] == "end"]
        assert [m["episode"] for m in ends] == [0, 1]
        assert {c.topic for c in reader.connections} >= {"/joint_states", "/observation", CMD_TOPIC}
    assert_no_leftovers(record_proc)


@pytest.fixture
def record_fail_proc(install, tmp_path):
    (tmp_path / "exists").mkdir()
    return ros2_launch(install, "record_demos.launch.py", output=tmp_path / "exists", episodes=2)


@launch_pytest.fixture
def record_fail_launch(record_fail_proc):
    return launch_with(record_fail_proc)


@pytest.mark.launch(fixture=record_fail_launch)
def test_record_demos_ends_with_an_error_when_the_recorder_fails(record_fail_proc):
    assert wait_exit(record_fail_proc) == 1, output(record_fail_proc)[-3000:]
    out = output(record_fail_proc)
    assert "output bag already exists" in out
    assert "recorder_node exited with code 2" in out
    assert_no_leftovers(record_fail_proc)  # sim_node was stopped with it


# --------------------------------------------------------------------------- deploy
@pytest.fixture
def deploy_proc(install, files):
    return ros2_launch(install, "deploy.launch.py", checkpoint=files["policy"], control_rate_hz=25.0)


@launch_pytest.fixture
def deploy_launch(deploy_proc):
    return launch_with(deploy_proc)


@pytest.mark.launch(fixture=deploy_launch)
def test_deploy_activates_the_controller_and_commands_until_ctrl_c(deploy_proc, probe, files):
    from std_msgs.msg import Float64MultiArray

    commands = probe.subscribe(CMD_TOPIC, Float64MultiArray)
    probe.until(lambda: {"sim_node", "controller_node"} <= set(probe.node_names()), "both nodes", deploy_proc)
    probe.until(lambda: probe.lifecycle_state("controller_node") == "active", "controller active", deploy_proc)
    got = probe.params("controller_node", ["checkpoint", "control_rate_hz", "autostart"])
    assert got == {"checkpoint": files["policy"], "control_rate_hz": "25.0", "autostart": False}  # launch args
    got = probe.params("sim_node", ["mode", "config", "max_episodes"])
    assert got == {"mode": "realtime", "config": "arm_reach", "max_episodes": 0}  # + config/nodes.yaml
    probe.until(lambda: len(commands) >= 20, "commands on " + CMD_TOPIC, deploy_proc)
    ctrl_c(deploy_proc)
    assert wait_exit(deploy_proc) == 0, output(deploy_proc)[-3000:]
    out = output(deploy_proc)
    assert "escalating" not in out, out[-3000:]
    with probe.lock:
        last = np.asarray(commands[-1].data)
    assert np.all(last == 0.0), f"the last command is the stop command (stop_action zero), got {last}"
    assert_no_leftovers(deploy_proc)


@pytest.fixture
def deploy_fail_proc(install, files):
    return ros2_launch(install, "deploy.launch.py", checkpoint=Path(files["dir"]) / "missing.safetensors")


@launch_pytest.fixture
def deploy_fail_launch(deploy_fail_proc):
    return launch_with(deploy_fail_proc)


@pytest.mark.launch(fixture=deploy_fail_launch)
def test_deploy_ends_with_an_error_when_the_controller_cannot_configure(deploy_fail_proc):
    assert wait_exit(deploy_fail_proc) == 1, output(deploy_fail_proc)[-3000:]
    out = output(deploy_fail_proc)
    assert "missing.safetensors" in out
    assert "controller_node failed to configure" in out
    assert_no_leftovers(deploy_fail_proc)


# --------------------------------------------------------------------------- train
@pytest.fixture
def train_done_proc(install, files, tmp_path):
    return ros2_launch(install, "train.launch.py", config=files["config"], dataset=files["demos"],
                       out_dir=tmp_path / "run", steps=60, backend="ros", device="cpu")


@launch_pytest.fixture
def train_done_launch(train_done_proc):
    return launch_with(train_done_proc)


@pytest.mark.launch(fixture=train_done_launch)
def test_train_ros_backend_ends_when_training_ends(train_done_proc, tmp_path):
    assert wait_exit(train_done_proc, timeout=2 * WAIT) == 0, output(train_done_proc)[-3000:]
    out = output(train_done_proc)
    assert "training finished at step 60" in out
    assert (tmp_path / "run" / "policy.safetensors").exists()
    assert_no_leftovers(train_done_proc)  # the lockstep sim_node ended with it


@pytest.fixture
def train_stop_proc(install, files, tmp_path):
    return ros2_launch(install, "train.launch.py", config=files["config"], dataset=files["demos"],
                       out_dir=tmp_path / "run", steps=100000, backend="ros", device="cpu")


@launch_pytest.fixture
def train_stop_launch(train_stop_proc):
    return launch_with(train_stop_proc)


@pytest.mark.launch(fixture=train_stop_launch)
def test_ctrl_c_on_training_writes_a_final_checkpoint_trainer_first(train_stop_proc, probe, files, tmp_path):
    from std_msgs.msg import String

    from smiling_ros.learn.checkpoint import load_checkpoint

    announced = probe.subscribe("/smiling_ros/policy", String)
    probe.until(lambda: announced, "a first policy announcement", train_stop_proc, timeout=2 * WAIT)
    # One trainer node: the env's own node takes none of launch's remaps or parameters.
    names = probe.node_names()
    assert names.count("trainer_node") == 1, names
    assert probe.params("trainer_node", ["backend", "dataset", "steps"]) == {
        "backend": "ros", "dataset": files["demos"], "steps": 100000}
    ctrl_c(train_stop_proc)
    assert wait_exit(train_stop_proc) == 0, output(train_stop_proc)[-3000:]
    out = output(train_stop_proc)
    assert "escalating" not in out, out[-3000:]
    stopped = [ln for ln in out.splitlines() if "training stopped at step" in ln]
    assert stopped, out[-3000:]
    step = int(stopped[0].split("training stopped at step ")[1].split(";")[0])
    assert int(load_checkpoint(tmp_path / "run" / "state.safetensors").meta["step"]) == step  # the final one
    # The robot side kept stepping until the trainer had left: its last steps reached the robot.
    assert "the robot went away first" not in out and "no observation" not in out
    assert "stopping once trainer_node left" in out
    assert_no_leftovers(train_stop_proc)


# --------------------------------------------------------------------------- demo
@pytest.fixture
def demo_proc(install, files, tmp_path):
    return ros2_launch(install, "demo.launch.py", config=files["config"], dataset=files["demos"],
                       checkpoint=files["policy"], out_dir=tmp_path / "live", steps=100000)


@launch_pytest.fixture
def demo_launch(demo_proc):
    return launch_with(demo_proc)


@pytest.mark.launch(fixture=demo_launch)
def test_demo_trains_deploys_and_stops_on_ctrl_c(demo_proc, probe, files, tmp_path):
    from std_msgs.msg import Float64MultiArray, String

    commands = probe.subscribe(CMD_TOPIC, Float64MultiArray)
    announced = probe.subscribe("/smiling_ros/policy", String)
    probe.until(lambda: {"sim_node", "trainer_node", "controller_node"} <= set(probe.node_names()),
                "the three nodes", demo_proc)
    probe.until(lambda: probe.lifecycle_state("controller_node") == "active", "controller active", demo_proc)
    assert probe.params("trainer_node", ["backend", "out_dir"]) == {"backend": "mujoco",
                                                                    "out_dir": str(tmp_path / "live")}
    probe.until(lambda: len(commands) >= 20, "commands on " + CMD_TOPIC, demo_proc)
    probe.until(lambda: announced, "a policy announcement", demo_proc, timeout=2 * WAIT)
    ctrl_c(demo_proc)
    assert wait_exit(demo_proc) == 0, output(demo_proc)[-3000:]
    out = output(demo_proc)
    assert "escalating" not in out, out[-3000:]
    assert "training stopped at step" in out
    assert (tmp_path / "live" / "state.safetensors").exists()
    assert_no_leftovers(demo_proc)
