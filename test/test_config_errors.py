"""Bad config files through the real CLI verbs that read them: one line naming the file and the
key, exit status 2, no traceback, nothing written at --out. (Bag-side config cases of import-bag
are in test/badbags; controller_node's section in test_controller.py.)"""
import copy
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from smiling_ros.cli import main
from smiling_ros.config import load_config
from smiling_ros.data.dataset import Dataset

REPO = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((REPO / "config" / "arm_reach.yaml").read_text())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    eps = [(rng.normal(size=(40, 8)).astype(np.float32), rng.uniform(-1, 1, (40, 2)).astype(np.float32))
           for _ in range(3)]
    d = tmp_path_factory.mktemp("ds") / "ds"
    Dataset.from_episodes(eps, {"task": "smiling_ros/ArmReach-v0", "rate_hz": 20.0}).save(d)
    return d


def argv_for(verb, cfg, out, dataset):
    """Arguments that would run `verb` (briefly) if the config were good."""
    if verb == "import-bag":
        return [verb, str(dataset), "--config", cfg, "--out", out, "--no-progress"]
    if verb == "eval":
        return [verb, "--checkpoint", "random", "--config", cfg, "--episodes", "1"]
    if verb == "rollout":
        return [verb, "--config", cfg, "--out", out, "--episodes", "1"]
    if verb == "train-expert":
        return [verb, "--config", cfg, "--out", out, "--steps", "1", "--no-progress"]
    if verb == "train-dbc":
        return [verb, "--config", cfg, "--dataset", str(dataset), "--out", out, "--steps", "1", "--dm-steps", "1",
                "--quiet"]
    if verb == "train-dydiff":
        return [verb, "--config", cfg, "--dataset", str(dataset), "--out", out, "--steps", "1", "--ensemble-steps",
                "1", "--horizon", "8", "--quiet"]
    if verb == "train-bridger":
        return [verb, "--config", cfg, "--dataset", str(dataset), "--out", out, "--train-steps", "1",
                "--eval-episodes", "0", "--source", "gaussian", "--no-progress"]
    return [verb, "--config", cfg, "--dataset", str(dataset), "--out", out, "--steps", "1", "--no-progress"]


def setkey(*path_and_value):
    *path, value = path_and_value

    def edit(cfg):
        d = cfg
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value

    return edit


# name: (edit of arm_reach.yaml, verbs, words the error line must contain besides the file name)
CASES = {
    "unknown_top_key": (setkey("unknown_key", 1), ["import-bag", "train-smiling", "eval"], ["unknown key 'unknown_key'"]),
    "unknown_key_smiling": (setkey("smiling", "unknown_key", 1), ["train-smiling", "train-bc", "train-dac"],
                            ["smiling", "unknown key 'unknown_key'"]),
    "unknown_key_smiling_sac": (setkey("smiling", "sac", "lr_x", 1e-3), ["train-smiling"], ["smiling.sac", "'lr_x'"]),
    "unknown_key_observation_field": (lambda c: c["observation"][0].update(feild="data"), ["import-bag", "eval"],
                                      ["observation[0]", "unknown key 'feild'"]),
    "unknown_key_bridger": (setkey("bridger", "stepz", 5), ["train-bridger"], ["bridger", "unknown key 'stepz'"]),
    "unknown_key_dbc": (setkey("dbc", "lamda_dm", 1.0), ["train-dbc"], ["dbc", "unknown key 'lamda_dm'"]),
    "unknown_key_dydiff": (setkey("dydiff", "horizn", 8), ["train-dydiff"], ["dydiff", "unknown key 'horizn'"]),
    "unknown_key_expert": (setkey("expert", "chekpoint", "x"), ["eval", "train-expert"], ["expert", "'chekpoint'"]),
    "internal_key_path": (setkey("path", "/etc/passwd"), ["import-bag"], ["unknown key 'path'"]),
    "wrong_type_rate": (setkey("rate_hz", "fast"), ["import-bag", "train-smiling", "eval"], ["rate_hz", "number"]),
    "wrong_type_seed": (setkey("seed", 1.5), ["eval"], ["seed", "integer"]),
    "wrong_type_observation": (setkey("observation", "joint_states"), ["import-bag"], ["observation", "list"]),
    "wrong_type_observation_item": (setkey("observation", ["/joint_states"]), ["import-bag"], ["observation[0]", "mapping"]),
    "wrong_type_task": (setkey("task", ["a", "b"]), ["eval"], ["task", "mapping"]),
    "wrong_type_section": (setkey("smiling", [1, 2]), ["train-smiling"], ["smiling", "mapping"]),
    "wrong_type_steps": (setkey("smiling", "total_steps", "many"), ["train-smiling"], ["smiling.total_steps", "integer"]),
    "wrong_type_flag": (setkey("bridger", "final_noise", "yes"), ["train-bridger"], ["bridger.final_noise", "true/false"]),
    "negative_rate": (setkey("rate_hz", -20.0), ["import-bag", "train-smiling", "eval"], ["rate_hz", "> 0"]),
    "zero_rate": (setkey("rate_hz", 0), ["import-bag", "eval"], ["rate_hz", "> 0"]),
    "negative_gap": (setkey("import", "gap_s", -1.0), ["import-bag"], ["import.gap_s", "> 0"]),
    "zero_T": (setkey("smiling", "T", 0), ["train-smiling"], ["smiling.T", "> 0"]),
    "negative_lr": (setkey("bridger", "lr", -1e-3), ["train-bridger"], ["bridger.lr", "> 0"]),
    "negative_dbc_lr": (setkey("dbc", "lr", -1.0), ["train-dbc"], ["dbc.lr", "> 0"]),
    "negative_episode_steps": (setkey("task", "max_episode_steps", -3), ["eval", "train-smiling"],
                               ["task.max_episode_steps", "> 0"]),
    "negative_seed": (setkey("seed", -1), ["eval", "rollout"], ["seed", ">= 0"]),
    "relative_topic": (setkey("topics", "command", "cmd"), ["import-bag", "eval"], ["topics.command", "absolute"]),
    "relative_field_topic": (lambda c: c["observation"][0].update(topic="observation"), ["import-bag"],
                             ["observation[0].topic", "absolute"]),
    "bad_storage": (setkey("record", "storage", "hdf5"), ["import-bag"], ["record.storage", "hdf5"]),
    "limits_inverted": (setkey("limits", {"action_low": [1, 1], "action_high": [0, 0]}), ["train-bc"],
                        ["limits", "action_low[0]"]),
    "no_observation": (setkey("observation", []), ["import-bag"], ["'observation' must list"]),
}

RAW = {  # files that are not a config at all
    "invalid_yaml": ("rate_hz: 20\nobservation: [ {topic: /observation\n", ["not valid YAML at line"]),
    "tab_indented_yaml": ("task:\n\tenv: x\n", ["not valid YAML"]),
    "empty_file": ("", ["empty config file"]),
    "comments_only": ("# nothing here\n", ["empty config file"]),
    "scalar_top_level": ("42\n", ["expected a YAML mapping", "int"]),
    "list_top_level": ("- task\n- rate_hz\n", ["expected a YAML mapping", "list"]),
    "binary_garbage": ("\x00\x01\x02\xff\xfe", ["not valid YAML"]),
}


def run_cli(capsys, argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def check_one_line(rc, out, err, verb, cfg, words, out_path):
    lines = err.strip().splitlines()
    assert rc == 2, err
    assert len(lines) == 1, err
    assert "Traceback" not in out + err
    assert lines[0].startswith(f"smiling-ros {verb}: error: {cfg}"), lines[0]  # names the file first
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not Path(out_path).exists()


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_key_or_value(tmp_path, capsys, dataset, case):
    edit, verbs, words = CASES[case]
    data = copy.deepcopy(BASE)
    edit(data)
    cfg = tmp_path / f"{case}.yaml"
    cfg.write_text(yaml.safe_dump(data, sort_keys=False))
    for verb in verbs:
        out = tmp_path / f"out_{verb}"
        rc, o, e = run_cli(capsys, argv_for(verb, cfg, out, dataset))
        check_one_line(rc, o, e, verb, cfg, words, out)


@pytest.mark.parametrize("case", sorted(RAW))
def test_file_that_is_no_config(tmp_path, capsys, dataset, case):
    text, words = RAW[case]
    cfg = tmp_path / f"{case}.yaml"
    cfg.write_bytes(text.encode("latin-1"))
    for verb in ("import-bag", "train-smiling"):
        out = tmp_path / "out"
        rc, o, e = run_cli(capsys, argv_for(verb, cfg, out, dataset))
        check_one_line(rc, o, e, verb, cfg, words, out)


def test_missing_or_unreadable_config(tmp_path, capsys, dataset):
    for verb in ("import-bag", "train-smiling", "train-bridger", "eval", "rollout", "demo", "record-demos"):
        out = tmp_path / "out"
        argv = argv_for(verb, tmp_path / "nope.yaml", out, dataset)
        if verb in ("demo", "record-demos"):
            argv = [verb, "--config", tmp_path / "nope.yaml", "--out", out] + (["--episodes", "1"] if verb != "demo" else [])
        rc, o, e = run_cli(capsys, argv)
        check_one_line(rc, o, e, verb, tmp_path / "nope.yaml", ["config file not found"], out)
    rc, o, e = run_cli(capsys, argv_for("import-bag", tmp_path, tmp_path / "out", dataset))  # a directory
    check_one_line(rc, o, e, "import-bag", tmp_path, ["cannot read config"], tmp_path / "out")


def test_config_error_through_the_console_script(tmp_path, dataset):
    data = copy.deepcopy(BASE)
    data["smiling"]["unknown_key"] = 1
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(data))
    exe = shutil.which("smiling-ros", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "smiling_ros.cli"]
    res = subprocess.run(cmd + ["train-smiling", "--config", str(cfg), "--dataset", str(dataset), "--out",
                                str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == "" or len(res.stderr.strip().splitlines()) == 1
    assert f"{cfg}: smiling: unknown key 'unknown_key'" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["arm_reach", "hopper"])
def test_shipped_configs_parse_in_every_section(name):
    """The shipped examples stay valid for every method that reads them (strictness cuts both ways)."""
    from smiling_ros.methods.bridger.train import load_section
    from smiling_ros.control import ControllerSection
    from smiling_ros.methods.dbc.train import DBCConfig
    from smiling_ros.methods.dydiff.train import DyDiffConfig
    from smiling_ros.methods.smiling.config import expert_section, smiling_section

    cfg = load_config(name)
    smiling_section(cfg)
    expert_section(cfg)
    load_section(cfg)
    cfg.section(DBCConfig, "dbc")
    cfg.section(DyDiffConfig, "dydiff")
    cfg.section(ControllerSection, "controller")
    assert cfg.rate_hz > 0 and cfg.observation
