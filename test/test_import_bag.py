"""`smiling-ros import-bag` on bags written with rosbags (MCAP and sqlite3, with and without
episode markers), and the bad-input corpus of test/badbags through the real CLI."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from badbags import (
    CMD,
    CORPUS,
    MARKERS,
    OBS_FIELDS,
    T0,
    demo_bag,
    episode_messages,
    error_matches,
    expected_obs,
    cmd_vec,
    float_array,
    leftovers,
    marker,
    storage_file,
    truncate,
    write_bag,
    write_config,
)

from smiling_ros.cli import main
from smiling_ros.data.dataset import Dataset

REPO = Path(__file__).resolve().parent.parent


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["import-bag", *map(str, argv)])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def last_at_or_before(msgs, topic, g):
    """Brute force: time (s since T0) of the last message on topic at or before g (ns)."""
    best = None
    for tp, t, _ in msgs:
        if tp == topic and t <= g:
            best = t
    assert best is not None
    return (best - T0) * 1e-9


def check_against_messages(ds: Dataset, msgs):
    """Every dataset row equals the fields of the last message at or before its grid time."""
    for ep in ds.meta["episodes"]:
        assert ep["end_ns"] - ep["start_ns"] == pytest.approx((ep["steps"] - 1) * 1e9 / ds.meta["rate_hz"], abs=ep["steps"])
    rows = 0
    for ep, (obs, act) in zip(ds.meta["episodes"], ds.episodes()):
        # integer ns arithmetic: float64 cannot hold epoch nanoseconds exactly, and grid points can
        # coincide with message stamps (the message at the grid time counts)
        grid = ep["start_ns"] + np.round(np.arange(ep["steps"]) * 1e9 / ds.meta["rate_hz"]).astype(np.int64)
        for k, g in enumerate(grid):
            t_js = last_at_or_before(msgs, "/joint_states", g)
            t_pose = last_at_or_before(msgs, "/ee_pose", g)
            t_obs = last_at_or_before(msgs, "/observation", g)
            np.testing.assert_allclose(obs[k], expected_obs(0, t_js, t_pose, t_obs), rtol=1e-5, atol=1e-5)
            if act is not None:
                np.testing.assert_allclose(act[k], cmd_vec(last_at_or_before(msgs, CMD, g)), rtol=1e-5, atol=1e-5)
            rows += 1
    assert rows == len(ds.obs)


@pytest.mark.parametrize("storage,form", [("mcap", "dir"), ("sqlite3", "dir"), ("mcap", "file"), ("sqlite3", "file"),
                                          ("mcap", "no-metadata")])
def test_import_without_markers_splits_at_gaps(tmp_path, capsys, storage, form):
    info = demo_bag(tmp_path / "bag", storage, episodes=3, seconds=1.0, pause_s=1.0)
    bag = info["path"]
    if form == "file":
        bag = storage_file(bag)
    elif form == "no-metadata":  # a recording killed before it wrote metadata.yaml
        (bag / "metadata.yaml").unlink()
    cfg = write_config(tmp_path / "cfg.yaml", gap_s=0.5)
    rc, out, err = run_cli(capsys, bag, "--config", cfg, "--out", tmp_path / "ds", "--no-progress")
    assert rc == 0, err
    assert err == ""
    assert "3 episodes" in out and "obs_dim 12" in out and "act_dim 2" in out
    ds = Dataset.load(tmp_path / "ds")
    assert ds.num_episodes == 3 and ds.obs_dim == 12 and ds.act_dim == 2
    # 1 s per episode at 20 Hz, the grid starts half a period after every field has a value
    assert all(17 <= n <= 20 for n in ds.meta["episode_lengths"])
    assert ds.meta["episodes_from"] == "gaps" and ds.meta["source"]["storage"] == storage
    assert ds.meta["source"]["topics"]["/joint_states"] == {"type": "sensor_msgs/msg/JointState", "count": 300}
    assert ds.meta["obs_names"][:2] == ["/joint_states:position[shoulder]", "/joint_states:position[elbow]"]
    assert ds.meta["obs_names"][7:10] == [f"/ee_pose:pose.orientation[{a}]" for a in ("roll", "pitch", "yaw")]
    assert len(ds.meta["stats"]["obs"]["mean"]) == 12 and ds.success is None
    check_against_messages(ds, info["messages"])
    # each episode starts only after all four topics have a message inside it
    for ep, start in zip(ds.meta["episodes"], info["starts_ns"]):
        assert ep["start_ns"] >= start + 7_000_000 + 25_000_000  # command offset + half a period


def test_markers_define_episodes_and_success(tmp_path, capsys):
    # pauses shorter than gap_s: without markers this would be one episode
    info = demo_bag(tmp_path / "bag", "mcap", episodes=3, seconds=1.0, pause_s=0.2, markers=True,
                    success=[True, False, True])
    cfg = write_config(tmp_path / "cfg.yaml", gap_s=0.5)
    rc, out, err = run_cli(capsys, info["path"], "--config", cfg, "--out", tmp_path / "ds", "--no-progress")
    assert rc == 0, err
    ds = Dataset.load(tmp_path / "ds")
    assert ds.meta["episodes_from"] == "markers" and ds.num_episodes == 3
    assert ds.success.tolist() == [True, False, True]
    assert [e["marker_episode"] for e in ds.meta["episodes"]] == [0, 1, 2]
    check_against_messages(ds, info["messages"])
    rc, _, err = run_cli(capsys, info["path"], "--config", write_config(tmp_path / "c2.yaml", gap_s=0.5,
                         topics={"episode": "/no/markers"}), "--out", tmp_path / "ds2", "--no-progress")
    assert rc == 0, err
    ds2 = Dataset.load(tmp_path / "ds2")
    # the 0.2 s pauses are shorter than gap_s, but longer than 2 periods of the 20 Hz topics: the
    # steps where those are stale are dropped, as the controller would not command there
    assert ds2.num_episodes == 3 and ds2.meta["episodes_from"] == "gaps"
    assert [e["cut_by"] for e in ds2.meta["episodes"]] == [["stale"], ["stale"], ["stale"]]
    assert ds2.meta["alignment"]["dropped_steps"] > 0


def test_markers_open_episode_and_stray_end(tmp_path, capsys):
    msgs = episode_messages(T0, 1.0) + episode_messages(T0 + 1_200_000_000, 1.0)
    msgs += [(MARKERS, T0 - 500_000_000, marker("end", 7)),  # an end with no open episode: ignored
             (MARKERS, T0 - 1, marker("start", 0)), (MARKERS, T0 + 1_150_000_000, marker("start", 1))]
    msgs.sort(key=lambda m: m[1])
    write_bag(tmp_path / "bag", msgs, "sqlite3")
    rc, _, err = run_cli(capsys, tmp_path / "bag", "--config", write_config(tmp_path / "c.yaml"), "--out",
                         tmp_path / "ds", "--no-progress")
    assert rc == 0, err
    ds = Dataset.load(tmp_path / "ds")
    assert ds.num_episodes == 2 and ds.meta["stray_markers"] == 1 and ds.success is None
    check_against_messages(ds, msgs)


def test_marked_episode_with_state_dropout_is_split(tmp_path, capsys):
    """A marked episode whose state stream stops for longer than gap_s is cut at the dropout
    instead of holding stale values across it."""
    msgs = episode_messages(T0, 1.0) + episode_messages(T0 + 2_000_000_000, 1.0)
    msgs += [(MARKERS, T0 - 1, marker("start", 4)), (MARKERS, T0 + 3_100_000_000, marker("end", 4, True))]
    msgs.sort(key=lambda m: m[1])
    write_bag(tmp_path / "bag", msgs)
    rc, out, err = run_cli(capsys, tmp_path / "bag", "--config", write_config(tmp_path / "c.yaml", gap_s=0.5),
                           "--out", tmp_path / "ds", "--no-progress")
    assert rc == 0, err
    assert "1 marked episode(s) split" in out
    ds = Dataset.load(tmp_path / "ds")
    assert ds.num_episodes == 2 and ds.meta["split_marked_episodes"] == 1
    assert [e["marker_episode"] for e in ds.meta["episodes"]] == [4, 4] and ds.success.tolist() == [True, True]
    assert all(e["end_ns"] <= T0 + 1_000_000_000 or e["start_ns"] >= T0 + 2_000_000_000 for e in ds.meta["episodes"])
    check_against_messages(ds, msgs)


def test_state_only_bag_and_rate_and_gap_overrides(tmp_path, capsys):
    info = demo_bag(tmp_path / "bag", "mcap", episodes=2, seconds=1.0, pause_s=1.0, actions=False)
    # align: hold keeps values of any age (by default a step with a field older than its maximum
    # age is dropped, see test_episodes.py)
    cfg = write_config(tmp_path / "cfg.yaml", observation=[dict(f, align="hold") for f in OBS_FIELDS])
    rc, out, err = run_cli(capsys, info["path"], "--config", cfg, "--out", tmp_path / "ds", "--rate", "10",
                           "--gap", "5", "--no-progress")
    assert rc == 0, err
    assert "state-only" in out and err == ""
    ds = Dataset.load(tmp_path / "ds")
    assert ds.act is None and ds.num_episodes == 1 and ds.meta["rate_hz"] == 10.0 and ds.meta["gap_s"] == 5.0
    # one episode across the 1 s pause, held (stale) values included: 3 s at 10 Hz
    assert 28 <= len(ds.obs) <= 30
    check_against_messages(ds, info["messages"])


def test_short_fragments_dropped_and_reported(tmp_path, capsys):
    msgs = episode_messages(T0, 2.0) + episode_messages(T0 + 3_000_000_000, 0.2)
    msgs.sort(key=lambda m: m[1])
    write_bag(tmp_path / "bag", msgs)
    rc, out, err = run_cli(capsys, tmp_path / "bag", "--config", write_config(tmp_path / "c.yaml", min_steps=5),
                           "--out", tmp_path / "ds", "--no-progress")
    assert rc == 0, err
    assert "dropped 1 of 2" in out
    ds = Dataset.load(tmp_path / "ds")
    assert ds.num_episodes == 1 and ds.meta["dropped_episodes"] == 1


def test_reimport_replaces_dataset_atomically(tmp_path, capsys):
    info = demo_bag(tmp_path / "bag", "mcap", episodes=2, seconds=1.0)
    cfg = write_config(tmp_path / "cfg.yaml")
    rc, _, err = run_cli(capsys, info["path"], "--config", cfg, "--out", tmp_path / "ds", "--rate", "20", "--no-progress")
    assert rc == 0, err
    # an existing dataset is replaced only when asked to
    rc, _, err = run_cli(capsys, info["path"], "--config", cfg, "--out", tmp_path / "ds", "--rate", "10", "--no-progress")
    assert rc == 2 and "pass --overwrite" in err and Dataset.load(tmp_path / "ds").meta["rate_hz"] == 20.0
    rc, _, err = run_cli(capsys, info["path"], "--config", cfg, "--out", tmp_path / "ds", "--rate", "10", "--no-progress",
                         "--overwrite")
    assert rc == 0, err
    assert Dataset.load(tmp_path / "ds").meta["rate_hz"] == 10.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag", "cfg.yaml", "ds"]
    # a failing re-import leaves the previous dataset as it was
    bad = write_config(tmp_path / "bad.yaml", observation=[{"topic": "/nope", "field": "data"}])
    rc, _, err = run_cli(capsys, info["path"], "--config", bad, "--out", tmp_path / "ds", "--no-progress", "--overwrite")
    assert rc == 2 and "'/nope' not in bag" in err
    assert Dataset.load(tmp_path / "ds").meta["rate_hz"] == 10.0


def test_salvage_truncated_mcap(tmp_path, capsys):
    info = demo_bag(tmp_path / "bag", "mcap", episodes=4, seconds=1.0, ballast=20_000)  # ~6 MiB, 1 MiB chunks
    f = storage_file(info["path"])
    (info["path"] / "metadata.yaml").unlink()  # killed before closing: no metadata, no footer
    truncate(f, 0.7)
    cfg = write_config(tmp_path / "cfg.yaml")
    rc, _, err = run_cli(capsys, info["path"], "--config", cfg, "--out", tmp_path / "ds", "--no-progress")
    assert rc == 2 and "--salvage" in err
    rc, out, err = run_cli(capsys, info["path"], "--config", cfg, "--out", tmp_path / "ds", "--salvage", "--no-progress")
    assert rc == 0, err
    assert "truncated MCAP" in out
    ds = Dataset.load(tmp_path / "ds")
    assert 1 <= ds.num_episodes <= 3
    check_against_messages(ds, info["messages"])


def test_split_storage_files_without_metadata(tmp_path, capsys):
    """Two storage files in one directory (a split recording without metadata.yaml) are merged in time."""
    a = demo_bag(tmp_path / "a", "mcap", episodes=1, seconds=1.0)
    later = [(tp, t + 3_000_000_000, m) for tp, t, m in episode_messages(T0 + 500_000_000, 1.0)]
    write_bag(tmp_path / "b", later, "mcap")
    (tmp_path / "rec").mkdir()
    shutil.move(storage_file(tmp_path / "a"), tmp_path / "rec" / "rec_0.mcap")
    shutil.move(storage_file(tmp_path / "b"), tmp_path / "rec" / "rec_1.mcap")
    rc, _, err = run_cli(capsys, tmp_path / "rec", "--config", write_config(tmp_path / "c.yaml"), "--out",
                         tmp_path / "ds", "--no-progress")
    assert rc == 0, err
    ds = Dataset.load(tmp_path / "ds")
    assert ds.num_episodes == 2 and len(ds.meta["source"]["files"]) == 2


def test_custom_message_type_from_bag_definitions(tmp_path, capsys):
    """A message type known only from the bag's own definitions (not in the Jazzy store) deserialises."""
    from rosbags.typesys import get_types_from_msg

    from smiling_ros.io.bag import BagWriter, typestore

    store = typestore()
    store.register(get_types_from_msg("float64[] q\nstring label\ngeometry_msgs/Vector3 tip\n", "my_robot_msgs/msg/ArmState"))
    Arm = store.types["my_robot_msgs/msg/ArmState"]
    V3 = store.types["geometry_msgs/msg/Vector3"]
    with BagWriter(tmp_path / "bag", "mcap", store=store) as w:
        for k in range(40):
            t = T0 + k * 50_000_000
            w.write_msg("/arm", t, Arm(q=np.array([k, -k], float), label="x", tip=V3(x=0.1 * k, y=0.0, z=1.0)))
            w.write_msg(CMD, t + 1_000_000, float_array([k, 0.0]))
    obs = [{"topic": "/arm", "type": "my_robot_msgs/msg/ArmState", "field": "q"}, {"topic": "/arm", "field": "tip"}]
    cfg = write_config(tmp_path / "c.yaml", observation=obs, action=[{"topic": CMD, "field": "data"}])
    rc, _, err = run_cli(capsys, tmp_path / "bag", "--config", cfg, "--out", tmp_path / "ds", "--no-progress")
    assert rc == 0, err
    ds = Dataset.load(tmp_path / "ds")
    assert ds.obs_dim == 5 and ds.num_episodes == 1
    k = np.arange(len(ds.obs))
    np.testing.assert_allclose(ds.obs[:, 0] + ds.obs[:, 1], 0)
    np.testing.assert_allclose(ds.obs[:, 2], 0.1 * ds.obs[:, 0], rtol=1e-5)
    np.testing.assert_allclose(ds.act[:, 0], ds.obs[:, 0])  # command k is sent 1 ms after state k
    assert np.all(np.diff(ds.obs[:, 0]) == 1) and len(k) >= 35


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_bad_input_corpus(tmp_path, capsys, case):
    argv = case.build(tmp_path)
    rc, out, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc != 0
    assert len(lines) == 1, err
    assert lines[0].startswith("smiling-ros import-bag: error: "), err
    assert "Traceback" not in err + out
    assert error_matches(lines[0], case.expect), lines[0]
    if case.name == "out_not_a_dataset":
        assert (tmp_path / "out" / "precious.txt").read_text() == "keep me"
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    else:
        assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_console_script_subprocess(tmp_path):
    """The installed `smiling-ros` entry point: a good import and two bad ones, as a user runs them."""
    exe = shutil.which("smiling-ros", path=os.path.dirname(sys.executable)) or shutil.which("smiling-ros")
    cmd = [exe] if exe else [sys.executable, "-m", "smiling_ros.cli"]
    info = demo_bag(tmp_path / "bag", "sqlite3", episodes=2, seconds=1.0, markers=True, success=[True, True])
    cfg = write_config(tmp_path / "cfg.yaml")
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    ok = subprocess.run(cmd + ["import-bag", str(info["path"]), "--config", str(cfg), "--out", str(tmp_path / "ds")],
                        capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "2 episodes" in ok.stdout and "episodes from markers" in ok.stdout
    assert json.loads((tmp_path / "ds" / "meta.json").read_text())["num_episodes"] == 2
    truncate(storage_file(info["path"]), 0.5)
    for extra in ([], ["--rate", "-1"]):
        bad = subprocess.run(cmd + ["import-bag", str(info["path"]), "--config", str(cfg), "--out", str(tmp_path / "d2"), *extra],
                             capture_output=True, text=True, env=env, timeout=120)
        assert bad.returncode == 2
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr
        assert not (tmp_path / "d2").exists()


@pytest.mark.slow
@pytest.mark.ros
def test_record_demos_bag_pairs_observation_k_with_command_k(tmp_path, ros_env):
    """A bag recorded over real DDS by `smiling-ros record-demos` (sim_node with the scripted expert
    and recorder_node) imports to rows that pair observation k with the command sent for it."""
    from conftest import ros_available

    if not ros_available():
        pytest.skip("rclpy wheels / ROS 2 not installed")
    from smiling_ros.io.bag import open_bag

    exe = shutil.which("smiling-ros", path=os.path.dirname(sys.executable)) or shutil.which("smiling-ros")
    cmd = [exe] if exe else [sys.executable, "-m", "smiling_ros.cli"]
    rec = subprocess.run(cmd + ["record-demos", "--config", "arm_reach", "--episodes", "2", "--out", str(tmp_path / "rec"),
                                "--quiet"], capture_output=True, text=True, env=ros_env, timeout=240)
    assert rec.returncode == 0, rec.stderr
    imp = subprocess.run(cmd + ["import-bag", str(tmp_path / "rec"), "--config", "arm_reach", "--out", str(tmp_path / "ds")],
                         capture_output=True, text=True, env=ros_env, timeout=120)
    assert imp.returncode == 0, imp.stderr
    ds = Dataset.load(tmp_path / "ds")
    assert ds.meta["episodes_from"] == "markers" and ds.num_episodes == 2 and ds.success is not None
    with open_bag(tmp_path / "rec") as r:
        msgs = list(r.read())
    # a message belongs to the episode whose start marker is the last at or before its stamp
    # (a marker and the episode's first observation may carry the same stamp, in either order)
    starts = [t for tp, _, t, m in msgs if tp == "/smiling_ros/episode" and json.loads(m.data)["event"] == "start"]
    per_ep: dict[str, list] = {"obs": [[] for _ in starts], "cmd": [[] for _ in starts]}
    for topic, _, t, msg in msgs:
        key = {"/observation": "obs", CMD: "cmd"}.get(topic)
        if key:
            per_ep[key][int(np.searchsorted(starts, t, side="right")) - 1].append(msg.data.copy())
    for e, (obs, act) in enumerate(ds.episodes()):
        n = len(per_ep["cmd"][e])  # n commands, n + 1 observations (reset state and one per step)
        assert len(per_ep["obs"][e]) == n + 1 and len(obs) == n
        np.testing.assert_allclose(obs, np.array(per_ep["obs"][e][:n]), atol=1e-6)
        np.testing.assert_allclose(act, np.array(per_ep["cmd"][e]), atol=1e-6)
