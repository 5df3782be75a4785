"""LeRobotDataset v3 interop: export-lerobot / import-lerobot, and (slow, opt-in) loading an export
with lerobot's own LeRobotDataset in a separate virtual environment."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from lab_bags import CMD, JOINTS, Lab, lab_config

from smiling_ros.cli import main
from smiling_ros.data.dataset import Dataset


def cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


@pytest.fixture(scope="module")
def lab_dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("lab")
    bag = Lab(takes=3, take_s=2.0).write(d / "bag")
    rc = main(["import-bag", str(bag), "--config", str(lab_config(d / "c.yaml", observation="position")),
               "--out", str(d / "ds"), "--no-progress"])
    assert rc == 0
    return d / "ds"


def test_export_layout_and_round_trip(tmp_path, capsys, lab_dataset):
    rc, out, err = cli(capsys, "export-lerobot", lab_dataset, tmp_path / "lr", "--task", "reach")
    assert rc == 0, err
    assert "LeRobot v3.0" in out
    info = json.loads((tmp_path / "lr/meta/info.json").read_text())
    ds = Dataset.load(lab_dataset)
    assert info["codebase_version"] == "v3.0" and info["fps"] == 50 and isinstance(info["fps"], int)
    assert info["total_episodes"] == 3 and info["total_frames"] == len(ds.obs) and info["total_tasks"] == 1
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["splits"] == {"train": "0:3"} and info["chunks_size"] == 1000 and info["video_path"] is None
    f = info["features"]
    assert f["observation.state"] == {"dtype": "float32", "shape": [6], "names": ds.meta["obs_names"]}
    assert f["action"] == {"dtype": "float32", "shape": [6], "names": JOINTS}  # command.joints
    for k in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        assert f[k]["shape"] == [1]
    data = pq.read_table(tmp_path / "lr/data/chunk-000/file-000.parquet")
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 6)
    np.testing.assert_array_equal(np.stack(data.column("action").to_numpy(zero_copy_only=False)), ds.act)
    eps = pq.read_table(tmp_path / "lr/meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in eps] == ds.meta["episode_lengths"]
    assert [e["dataset_to_index"] for e in eps] == ds.episode_ends.tolist() and eps[0]["tasks"] == ["reach"]
    ts = data.column("timestamp").to_numpy()
    assert ts[0] == 0 and ts[1] == np.float32(1 / 50) and data.column("frame_index").to_numpy()[eps[1]["dataset_from_index"]] == 0
    stats = json.loads((tmp_path / "lr/meta/stats.json").read_text())
    assert set(stats["action"]) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
    np.testing.assert_allclose(stats["observation.state"]["mean"], ds.obs.mean(0), rtol=1e-5, atol=1e-6)
    tasks = pq.read_table(tmp_path / "lr/meta/tasks.parquet")
    assert tasks.to_pydict() == {"task_index": [0], "__index_level_0__": ["reach"]}
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["__index_level_0__"]

    rc, out, err = cli(capsys, "import-lerobot", tmp_path / "lr", "--out", tmp_path / "back")
    assert rc == 0, err
    back = Dataset.load(tmp_path / "back")
    np.testing.assert_array_equal(back.obs, ds.obs)
    np.testing.assert_array_equal(back.act, ds.act)
    assert back.episode_ends.tolist() == ds.episode_ends.tolist() and back.meta["rate_hz"] == 50.0
    assert back.meta["obs_names"] == ds.meta["obs_names"]
    assert back.meta["action_spec"]["joints"] == JOINTS and back.meta["topic_rates_hz"][CMD] == pytest.approx(50, rel=0.01)
    # an existing output is refused without --overwrite, replaced with it
    rc, _, err = cli(capsys, "export-lerobot", lab_dataset, tmp_path / "lr")
    assert rc != 0 and "--overwrite" in err and "Traceback" not in err
    rc, _, err = cli(capsys, "export-lerobot", lab_dataset, tmp_path / "lr", "--overwrite")
    assert rc == 0, err


def _write_v3(root: Path, version: str = "v3.0", drop: str = "") -> None:
    """A v3 dataset as another tool writes it: variable-length lists, names as a dict, an image
    feature, two data files."""
    features = {
        "observation.state": {"dtype": "float32", "shape": [2], "names": {"motors": ["a", "b"]}},
        "observation.environment_state": {"dtype": "float32", "shape": [1], "names": None},
        "observation.images.top": {"dtype": "video", "shape": [8, 8, 3], "names": ["height", "width", "channel"]},
        "action": {"dtype": "float32", "shape": [2], "names": ["a", "b"]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps({
        "codebase_version": version, "fps": 10, "features": features, "total_episodes": 2, "total_frames": 7,
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"}))
    rows = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (1, 3)]
    for f, part in enumerate((rows[:4], rows[4:])):
        cols = {
            "observation.state": [[float(i), float(-i)] for i in range(len(rows))][4 * f: 4 * f + len(part)],
            "observation.environment_state": [float(10 + i) for i in range(len(rows))][4 * f: 4 * f + len(part)],
            "action": [[0.5 * i, 1.0] for i in range(len(rows))][4 * f: 4 * f + len(part)],
            "timestamp": [fi / 10 for _, fi in part],
            "frame_index": [fi for _, fi in part],
            "episode_index": [e for e, _ in part],
            "index": list(range(4 * f, 4 * f + len(part))),
            "task_index": [0] * len(part),
        }
        cols.pop(drop, None)
        p = root / f"data/chunk-000/file-{f:03d}.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(cols), p)


def test_import_independent_v3(tmp_path, capsys):
    _write_v3(tmp_path / "lr")
    rc, out, err = cli(capsys, "import-lerobot", tmp_path / "lr", "--out", tmp_path / "ds")
    assert rc == 0, err
    ds = Dataset.load(tmp_path / "ds")
    assert ds.episode_ends.tolist() == [3, 7] and ds.obs_dim == 3 and ds.act_dim == 2 and ds.meta["rate_hz"] == 10
    np.testing.assert_array_equal(ds.obs[:, :2], [[i, -i] for i in range(7)])
    np.testing.assert_array_equal(ds.obs[:, 2], np.arange(10, 17))
    assert ds.meta["obs_names"] == ["a", "b", "observation.environment_state[0]"]
    assert "image/video features left out: observation.images.top" in out


@pytest.mark.parametrize("case,words", [
    ("no-info", "meta/info.json: missing"),
    ("v2", "codebase_version 'v2.1'; only v3 datasets are read"),
    ("no-column", "column 'action' missing"),
    ("bad-json", "meta/info.json: corrupt JSON"),
])
def test_import_bad_input(tmp_path, capsys, case, words):
    root = tmp_path / "lr"
    _write_v3(root, version="v2.1" if case == "v2" else "v3.0", drop="action" if case == "no-column" else "")
    if case == "no-info":
        (root / "meta/info.json").unlink()
    if case == "bad-json":
        (root / "meta/info.json").write_text("{")
    rc, _, err = cli(capsys, "import-lerobot", root, "--out", tmp_path / "ds")
    assert rc != 0 and words in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ds").exists()


# --------------------------------------------------------------------------- lerobot itself
LEROBOT_VENV_ENV = "SMILING_ROS_LEROBOT_VENV"


def _lerobot_python() -> Path:
    """A Python with lerobot installed: $SMILING_ROS_LEROBOT_VENV (built there with pip when it has
    no lerobot yet). Skips, saying why, when it is not set or cannot be built."""
    where = os.environ.get(LEROBOT_VENV_ENV)
    if not where:
        pytest.skip(f"set {LEROBOT_VENV_ENV}=DIR to build (once) a virtual environment with lerobot there and "
                    "load an export with LeRobotDataset (lerobot pins torch < 2.11 and downloads several GB)")
    venv = Path(where)
    py = venv / "bin" / "python"
    if py.exists() and subprocess.run([py, "-c", "import lerobot"], capture_output=True).returncode == 0:
        return py
    if not py.exists():
        r = subprocess.run([sys.executable, "-m", "venv", venv], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot create a virtual environment at {venv}: {r.stderr.strip()[-300:]}")
    r = subprocess.run([py, "-m", "pip", "install", "-q", "lerobot"], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        pytest.skip(f"cannot install lerobot into {venv} (no package index?): {r.stderr.strip()[-300:]}")
    return py


@pytest.mark.slow
def test_export_loads_in_lerobot(tmp_path, lab_dataset):
    py = _lerobot_python()
    assert main(["export-lerobot", str(lab_dataset), str(tmp_path / "lr")]) == 0
    ds = Dataset.load(lab_dataset)
    script = textwrap.dedent("""
        import json, sys
        import numpy as np
        from lerobot.datasets.lerobot_dataset import LeRobotDataset
        d = LeRobotDataset("local/smiling_ros_export", root=sys.argv[1])
        items = [d[i] for i in (0, len(d) - 1)]
        print(json.dumps({
            "len": len(d), "episodes": d.num_episodes, "fps": d.fps,
            "names": d.meta.features["action"]["names"],
            "first_state": items[0]["observation.state"].tolist(),
            "last_action": items[1]["action"].tolist(),
            "last_episode": int(items[1]["episode_index"]), "task": items[0]["task"],
            "stats_mean": np.asarray(d.meta.stats["action"]["mean"]).tolist(),
        }))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_HOME"] = str(tmp_path / "hf")
    r = subprocess.run([py, "-c", script, str(tmp_path / "lr")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["len"] == len(ds.obs) and got["episodes"] == ds.num_episodes and got["fps"] == 50
    assert got["names"] == JOINTS and got["last_episode"] == ds.num_episodes - 1
    np.testing.assert_allclose(got["first_state"], ds.obs[0], rtol=1e-6)
    np.testing.assert_allclose(got["last_action"], ds.act[-1], rtol=1e-6)
    np.testing.assert_allclose(got["stats_mean"], ds.act.mean(0), rtol=1e-4, atol=1e-6)
    assert got["task"] == "demonstration"
    shutil.rmtree(tmp_path / "hf", ignore_errors=True)
