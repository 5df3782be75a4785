"""`smiling-ros demo` end to end at a tiny budget: every stage runs as a real process (ROS 2
recording and deployment over DDS, import, SMILING, BC, BRIDGER, evaluation) and the run
directory holds what the README promises. Learning quality is measured by the full demo and
bench/, not here."""
import json
import subprocess
import sys

import pytest
from conftest import requires_ros

pytestmark = pytest.mark.slow


@requires_ros
def test_demo_runs_end_to_end(tmp_path, ros_env):
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "smiling_ros.cli", "demo", "--budget", "quick", "--episodes", "3",
         "--smiling-steps", "400", "--out", str(out), "--time-scale", "10"],
        env=ros_env, capture_output=True, text=True, timeout=1800)  # an upper bound for a loaded machine (2 min idle)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    rows = res["results"]
    assert list(rows) == ["random", "BC", "SMILING", "BRIDGER", "expert"]
    assert rows["expert"]["success_rate"] == 1.0
    assert rows["random"]["success_rate"] == 0.0
    assert rows["expert"]["normalized_return"] > rows["random"]["normalized_return"] + 0.5
    loop = res["closed_loop"]
    assert loop["episodes"] == 5 and loop["success_rate"] is not None
    for name in ("demo.png", "bridger.safetensors", "smiling/policy.safetensors", "bc/policy.safetensors",
                 "dataset/meta.json", "demos/metadata.yaml", "deploy_bag/metadata.yaml"):
        assert (out / name).exists(), name
    assert "BRIDGER over ROS 2" in r.stdout


def test_demo_refuses_a_task_without_expert(tmp_path):
    r = subprocess.run([sys.executable, "-m", "smiling_ros.cli", "demo", "--config", "hopper",
                        "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "expert" in r.stderr
    assert not (tmp_path / "x").exists()
