"""Episodes from continuous recordings (markers, command silence, idle, gaps), the data checks,
and the action's joint names, on bags written with ``rosbags`` directly (test/lab_bags.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from lab_bags import CMD, JOINTS, Lab, lab_config, write_bag

from smiling_ros.cli import main
from smiling_ros.config import config_from_dict
from smiling_ros.data.dataset import Dataset
from smiling_ros.data.episodes import (
    Interval,
    JoyButtons,
    Takes,
    cut,
    idle_holes,
    marker_intervals,
    parse_marker_text,
    silence_holes,
)
from smiling_ros.errors import UserError


def import_cli(capsys, bag, cfg, out):
    rc = main(["import-bag", str(bag), "--config", str(cfg), "--out", str(out), "--no-progress"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return Dataset.load(out), cap.out


def warnings(ds, name):
    return [w["message"] for w in ds.meta["warnings"] if w["name"] == name]


# --------------------------------------------------------------------------- rules on lab bags
def test_teleop_pauses_cut_by_command_silence(tmp_path, capsys):
    lab = Lab(takes=4, take_s=3.0, pause_s=1.4)
    bag = lab.write(tmp_path / "bag")
    ds, out = import_cli(capsys, bag, lab_config(tmp_path / "cfg.yaml"), tmp_path / "ds")
    assert ds.num_episodes == 4
    assert ds.meta["episodes_from"] == "command_silence"
    # each take is the stretch of its commands (3 s at 50 Hz, first command 3 ms in)
    for ep, start in zip(ds.meta["episodes"], lab.take_starts):
        assert start <= ep["start_ns"] <= start + 60_000_000
        assert start + 2.9e9 <= ep["end_ns"] <= start + 3.0e9
    # inner boundaries were cut by the silence, the outer ones too (the driver ran before and after)
    assert [e["cut_by"] for e in ds.meta["episodes"]] == [["command_silence"]] * 4
    assert "cut by command_silence 4" in out and "episode 3: " in out
    # switched off, the whole recording is one long episode: the warning names the rules tried
    ds1, out1 = import_cli(capsys, bag, lab_config(tmp_path / "c1.yaml", command_silence_s=0, max_episode_s=5.0),
                           tmp_path / "ds1")
    assert ds1.num_episodes == 1 and ds1.meta["episodes_from"] == "gaps"
    (long,) = warnings(ds1, "long-episode")
    assert "import.max_episode_s" in long
    for rule in ("markers", "command_silence", "idle", "gaps"):
        assert f"{rule}: " in long
    assert "warning [long-episode]" in out1


def test_teleop_pauses_with_gap_flag_do_not_join_takes(tmp_path, capsys):
    # a generous --gap (the state stream never stops) used to join every take silently
    bag = Lab(takes=3).write(tmp_path / "bag")
    rc = main(["import-bag", str(bag), "--config", str(lab_config(tmp_path / "c.yaml")), "--out",
               str(tmp_path / "ds"), "--no-progress", "--gap", "2.0"])
    assert rc == 0
    assert Dataset.load(tmp_path / "ds").num_episodes == 3


@pytest.mark.parametrize("velocity", [True, False], ids=["velocity", "position-only"])
def test_idle_periods_cut_by_idle(tmp_path, capsys, velocity):
    # the teleop device publishes (zero) commands all the time: no silence, but the arm rests
    lab = Lab(takes=3, take_s=3.0, pause_s=2.0, lead_s=1.5, cmd_in_pause=True, velocity=velocity)
    bag = lab.write(tmp_path / "bag")
    obs = "readme" if velocity else "position"
    ds, _ = import_cli(capsys, bag, lab_config(tmp_path / "cfg.yaml", observation=obs), tmp_path / "ds0")
    assert ds.num_episodes == 1  # idle rule not configured
    assert [r["applies"] for r in ds.meta["episode_rules"]] == [False, False, False, False]
    cfg = lab_config(tmp_path / "cfg2.yaml", observation=obs, idle_joints=JOINTS[:3], idle_velocity=0.01, idle_s=1.0)
    ds, out = import_cli(capsys, bag, cfg, tmp_path / "ds")
    assert ds.num_episodes == 3 and ds.meta["episodes_from"] == "idle"
    assert all(e["cut_by"] == ["idle"] for e in ds.meta["episodes"])
    for ep, start in zip(ds.meta["episodes"], lab.take_starts):
        assert abs(ep["start_ns"] - start) < 0.1e9 and abs(ep["end_ns"] - (start + 3e9)) < 0.1e9
    assert "cut by idle 3" in out


def test_joy_button_presses_mark_takes(tmp_path, capsys):
    # commands flow all the time and the arm never rests long: only the button separates takes
    lab = Lab(takes=3, take_s=3.0, pause_s=0.6, cmd_in_pause=True, joy_button=2)
    bag = lab.write(tmp_path / "bag")
    cfg = lab_config(tmp_path / "cfg.yaml")
    ds, _ = import_cli(capsys, bag, cfg, tmp_path / "ds0")
    assert ds.num_episodes == 1  # no joystick configured
    d = yaml.safe_load(cfg.read_text())
    d["record"] = {"joy_topic": "/joy", "joy_button": 2}
    cfg.write_text(yaml.safe_dump(d))
    ds, out = import_cli(capsys, bag, cfg, tmp_path / "ds")
    assert ds.num_episodes == 3 and ds.meta["episodes_from"] == "markers"
    assert [e["marker_episode"] for e in ds.meta["episodes"]] == [0, 1, 2]
    for ep, start in zip(ds.meta["episodes"], lab.take_starts):
        assert abs(ep["start_ns"] - start) < 0.1e9 and abs(ep["end_ns"] - (start + 3e9)) < 0.1e9
    d["record"]["joy_button"] = 9
    cfg.write_text(yaml.safe_dump(d))
    rc = main(["import-bag", str(bag), "--config", str(cfg), "--out", str(tmp_path / "ds2"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and "topic '/joy': button 9 not in the Joy message (8 buttons" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("header", [True, False], ids=["header-stamps", "no-header-stamps"])
def test_multirate_topics(tmp_path, capsys, header):
    lab = Lab(takes=3, take_s=3.0, pause_s=1.4, js_rate=200.0, multirate=True, header=header)
    bag = lab.write(tmp_path / "bag")
    ds, out = import_cli(capsys, bag, lab_config(tmp_path / "cfg.yaml", observation="multirate"), tmp_path / "ds")
    assert ds.num_episodes == 3 and ds.obs_dim == 6 + 3 + 3
    rates = ds.meta["topic_rates_hz"]
    assert rates["/joint_states"] == pytest.approx(200.0, rel=0.01)
    assert rates["/target"] == pytest.approx(10.0, rel=0.01)
    assert rates["/ft"] == pytest.approx(50.0, rel=0.01)
    assert rates[CMD] == pytest.approx(50.0, rel=0.01)
    (slow,) = warnings(ds, "rate-below-dataset")
    assert "'/target' arrives at 10 Hz, below the dataset rate 50 Hz" in slow
    assert not warnings(ds, "stamps-duplicated")  # header stamps of 0 count as none
    assert ds.meta["obs_names"][6:9] == ["/target:data[0]", "/target:data[1]", "/target:data[2]"]
    assert ds.meta["obs_names"][9:] == [f"/ft:wrench.force[{a}]" for a in "xyz"]


# --------------------------------------------------------------------------- data checks
def test_echo_warning_on_readme_observation_not_on_positions(tmp_path, capsys):
    bag = Lab(takes=3).write(tmp_path / "bag")
    ds, out = import_cli(capsys, bag, lab_config(tmp_path / "readme.yaml"), tmp_path / "ds")
    echo = warnings(ds, "obs-echoes-action")
    assert len(echo) == 6  # each joint's velocity follows its own command
    assert "observation /joint_states:velocity[shoulder_pan] follows action " \
           f"{CMD}:data[0]" in echo[0]
    assert "warning [obs-echoes-action]" in out
    ds, out = import_cli(capsys, bag, lab_config(tmp_path / "pos.yaml", observation="position"), tmp_path / "ds2")
    assert not warnings(ds, "obs-echoes-action") and "obs-echoes-action" not in out


def test_stamp_and_constant_checks(tmp_path, capsys):
    lab = Lab(takes=2)
    msgs = lab.messages()
    js = [m for m in msgs if m[0] == "/joint_states"]
    # the driver repeats 5 header stamps and sends 3 from the past
    for k in range(5):
        js[100 + 10 * k][3].header.stamp = js[99 + 10 * k][3].header.stamp
    for k in range(3):
        js[400 + 10 * k][3].header.stamp = js[300][3].header.stamp
    bag = write_bag(tmp_path / "bag", msgs)
    ds, _ = import_cli(capsys, bag, lab_config(tmp_path / "c.yaml"), tmp_path / "ds")
    assert warnings(ds, "stamps-duplicated") == [f"topic '/joint_states': 5 of {len(js)} header stamps repeat the previous one"]
    assert warnings(ds, "stamps-not-monotonic") == [f"topic '/joint_states': 3 of {len(js)} header stamps go backwards"]
    assert not warnings(ds, "constant-observation")


def test_constant_column_and_action_spec(tmp_path, capsys):
    lab = Lab(takes=2, multirate=True)
    bag = lab.write(tmp_path / "bag")
    ds, _ = import_cli(capsys, bag, lab_config(tmp_path / "c.yaml", observation="multirate"), tmp_path / "ds")
    (const,) = warnings(ds, "constant-observation")
    assert "/target:data[1]" in const and "/target:data[0]" not in const
    spec = ds.meta["action_spec"]
    assert spec["joints"] == JOINTS and spec["meaning"] == "velocity" and spec["topic"] == CMD
    assert spec["names"] == [f"{CMD}:data[{i}]" for i in range(6)]
    d = yaml.safe_load((tmp_path / "c.yaml").read_text())
    d["command"]["joints"] = JOINTS[:4]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(d))
    rc = main(["import-bag", str(bag), "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "ds2"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0 and "command.joints lists 4 joints but the action has 6 elements" in err


# --------------------------------------------------------------------------- units
def test_cut_and_holes():
    iv = Interval(0, 100, start_by="recording", end_by="gaps")
    assert [(p.start_ns, p.end_ns, p.start_by, p.end_by) for p in cut(iv, [(10, 20), (50, 60)], "idle")] == [
        (0, 10, "recording", "idle"), (20, 50, "idle", "idle"), (60, 100, "idle", "gaps")]
    assert [(p.start_ns, p.end_ns) for p in cut(iv, [(0, 30)], "x")] == [(30, 100)]
    assert cut(iv, [], "x") == [iv]
    t = np.array([10, 11, 12, 40, 41, 95], np.int64)
    assert silence_holes(iv, t, 5) == [(0, 10), (12, 40), (41, 95)]
    assert silence_holes(Interval(200, 300), t, 5) == [(200, 300)]
    speed = np.array([0, 0, 1, 1, 0, 0], float)
    assert idle_holes(iv, t, speed, 0.5, 5) == [(0, 11), (41, 100)]  # rests at the ends extend to them
    assert idle_holes(iv, t, speed, 0.5, 60) == []


def test_markers_discard_and_takes():
    ms = [(0, {"event": "start", "episode": 0, "success": None}),
          (10, {"event": "end", "episode": 0, "success": True}),
          (20, {"event": "start", "episode": 1, "success": None}),
          (25, {"event": "discard", "episode": 1, "success": None}),
          (30, {"event": "start", "episode": 2, "success": None})]
    ivs, stray, discarded = marker_intervals(ms, 50)
    assert [(i.start_ns, i.end_ns, i.episode) for i in ivs] == [(0, 10, 0), (30, 50, 2)]
    assert stray == 0 and discarded == 1 and ivs[1].end_by == "recording"
    takes = Takes()
    assert takes.stop()[0] is None and takes.start()[0] == {"event": "start", "episode": 0}
    assert takes.start()[0] is None and takes.discard()[0]["event"] == "discard"
    assert takes.toggle()[0] == {"event": "start", "episode": 1} and takes.toggle()[0]["event"] == "end"
    joy = JoyButtons("/joy", 0, 1)
    assert joy.update([1, 0]) == []  # held at the first message: no press
    assert joy.update([0, 0]) == [] and joy.update([1, 1]) == ["toggle", "discard"] and joy.update([1, 1]) == []
    with pytest.raises(UserError, match="button 0 not in the Joy message"):
        JoyButtons("/joy", 0).update([])
    assert parse_marker_text('{"event": "discard", "episode": 3}') == {"event": "discard", "episode": 3}


def test_import_config_validation():
    base = {"observation": [{"topic": "/a"}]}
    for bad, msg in [({"command_silence_s": -1}, "import.command_silence_s: must be >= 0"),
                     ({"idle_s": 0}, "import.idle_s: must be > 0"),
                     ({"idle_topic": "js"}, "import.idle_topic: invalid topic name"),
                     ({"idle_joints": ["a", "a"]}, "import.idle_joints: a joint is listed twice"),
                     ({"max_episode_s": 0}, "import.max_episode_s: must be > 0"),
                     ({"idle_joint": ["a"]}, "unknown key 'idle_joint'")]:
        with pytest.raises(UserError, match=msg.replace(".", r"\.")):
            config_from_dict({**base, "import": bad}, "c.yaml")
    with pytest.raises(UserError, match="record.joy_discard_button: must differ"):
        config_from_dict({**base, "record": {"joy_topic": "/joy", "joy_button": 1, "joy_discard_button": 1}}, "c.yaml")


# --------------------------------------------------------------------------- alignment: train/serve parity
def test_import_and_controller_assembler_build_the_same_vectors(tmp_path, capsys):
    """One multi-rate message stream (header stamps that lag the receive time, a driver that
    repeats a stamp, a 10 Hz topic without header that drops out for 0.4 s (shorter than gap_s), a goal published once
    and held) -> import-bag, and the controller's assembler fed the same messages in receive
    order: at every grid time the dataset has a row for, the vectors are identical; where the
    dataset dropped a step, the controller's assembler reports a fault."""
    from smiling_ros.config import load_config
    from smiling_ros.control import make_assembler

    lab = Lab(takes=1, take_s=6.0, lead_s=0.5, js_rate=200.0, multirate=True)
    msgs = lab.messages()
    # /target stops for 0.4 s in the middle of the take; the driver republishes one stamp 5 times
    t_mid = lab.take_starts[0] + 3_000_000_000
    msgs = [m for m in msgs if not (m[0] == "/target" and t_mid <= m[2] < t_mid + 400_000_000)]
    js = [m for m in msgs if m[0] == "/joint_states"]
    for k in range(1, 6):
        js[300 + k][3].header.stamp = js[300][3].header.stamp
    from lab_bags import T

    goal = T["std_msgs/msg/Float64MultiArray"](layout=T["std_msgs/msg/MultiArrayLayout"](dim=[], data_offset=0),
                                               data=np.array([0.7, 0.1]))
    msgs.append(("/goal", "std_msgs/msg/Float64MultiArray", msgs[0][2] + 1_000_000, goal))
    msgs.sort(key=lambda m: m[2])
    bag = write_bag(tmp_path / "bag", msgs)
    cfg_path = lab_config(tmp_path / "c.yaml", observation="multirate")
    d = yaml.safe_load(cfg_path.read_text())
    d["observation"].append({"topic": "/goal", "type": "std_msgs/msg/Float64MultiArray", "field": "data",
                             "size": 2, "align": "hold"})
    cfg_path.write_text(yaml.safe_dump(d))
    ds, out = import_cli(capsys, bag, cfg_path, tmp_path / "ds")
    assert ds.meta["alignment"]["dropped_steps"] > 0 and ds.num_episodes == 2
    assert [e["cut_by"] for e in ds.meta["episodes"]] == [["command_silence", "stale"], ["stale", "command_silence"]]
    ages = {f["name"]: f["max_age_s"] for f in ds.meta["alignment"]["fields"]}
    assert ages["/target:data"] == pytest.approx(0.2, rel=0.02) and ages["/goal:data"] is None
    assert ages["/joint_states:position"] == pytest.approx(0.04, rel=0.02)  # 2 dataset periods

    cfg = load_config(cfg_path)
    asm = make_assembler(cfg.observation, ds.obs_dim, rates_hz=ds.meta["topic_rates_hz"],
                         period_s=1.0 / ds.meta["rate_hz"], stale_periods=cfg.import_.stale_periods)
    period = 1e9 / ds.meta["rate_hz"]
    rows = {}
    for ep, (obs, _) in zip(ds.meta["episodes"], ds.episodes()):
        grid = ep["start_ns"] + np.round(np.arange(ep["steps"]) * period).astype(np.int64)
        rows.update({int(g): row for g, row in zip(grid, obs)})
    first, last = min(rows), max(rows)
    all_grid = first + np.round(np.arange(int((last - first) / period) + 1) * period).astype(np.int64)
    obs_topics = {s.topic for s in cfg.observation}
    stream = iter([m for m in msgs if m[0] in obs_topics])
    pending = next(stream)
    compared = faulty = 0
    for g in all_grid:
        while pending is not None and pending[2] <= g:
            asm.update(pending[0], pending[3], pending[2], pending[1])
            pending = next(stream, None)
        faults = asm.faults(int(g))
        if int(g) in rows:
            assert faults == [], (g, faults)
            np.testing.assert_array_equal(rows[int(g)], asm.vector().astype(np.float32))
            compared += 1
        else:
            assert faults and {f.name for f in faults} == {"/target:data"}, faults
            faulty += 1
    assert compared == len(ds.obs) and faulty == ds.meta["alignment"]["dropped_steps"]


def test_checkpoint_carries_the_recorded_action_joints(tmp_path, capsys):
    """train-dbc (plain BC, a few steps) on an imported lab bag: the checkpoint's spec names the
    command joints and meaning recorded in the dataset, and the bag's topic rates."""
    bag = Lab(takes=2, take_s=2.0).write(tmp_path / "bag")
    cfg = lab_config(tmp_path / "c.yaml", observation="position")
    import_cli(capsys, bag, cfg, tmp_path / "ds")
    d = yaml.safe_load(cfg.read_text())
    d["command"] = {"meaning": "velocity"}  # the training config no longer lists the joints
    cfg.write_text(yaml.safe_dump(d))
    rc = main(["train-dbc", "--config", str(cfg), "--dataset", str(tmp_path / "ds"), "--out",
               str(tmp_path / "bc.safetensors"), "--no-dm", "--steps", "5", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    spec = json.loads((tmp_path / "bc.json").read_text())["spec"]
    assert spec["action"] == {"joints": JOINTS, "meaning": "velocity", "interface": "forward"}
    assert spec["topic_rates_hz"]["/joint_states"] == pytest.approx(100.0, rel=0.01) and spec["rate_hz"] == 50.0
