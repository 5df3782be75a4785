"""Every `smiling-ros` verb given a missing file, a directory that is not a dataset, a corrupt
dataset or a bad checkpoint: exactly one line on stderr, exit status 2, no traceback, and the
filesystem exactly as before (no --out created; a previous --out untouched). Also: interrupted
dataset saves leave the previous dataset readable.

Bag inputs of import-bag are covered by the corpus in test/badbags (test_import_bag.py), config
files by test_config_errors.py, checkpoint tampering in depth by test_checkpoint_safety.py.
"""
import hashlib
import json
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from smiling_ros.learn.checkpoint import save_checkpoint
from smiling_ros.cli import VERBS, main
from smiling_ros.data.dataset import Dataset
from smiling_ros.errors import UserError

OBS, ACT = 8, 2  # the arm task's dimensions


def good_dataset(path, n_eps=3, steps=40, obs=OBS):
    rng = np.random.default_rng(0)
    eps = [(rng.normal(size=(steps, obs)).astype(np.float32), rng.uniform(-1, 1, (steps, ACT)).astype(np.float32))
           for _ in range(n_eps)]
    return Dataset.from_episodes(eps, {"task": "smiling_ros/ArmReach-v0", "rate_hz": 20.0}).save(path)


def edit_data(d, **tensors):
    from safetensors.numpy import load_file

    t = load_file(str(d / "data.safetensors"))
    t.update(tensors)
    save_file(t, str(d / "data.safetensors"))


def mk_missing(d):
    return d / "nope"


def mk_file(d):
    (d / "data.txt").write_text("1 2 3\n")
    return d / "data.txt"


def mk_empty_dir(d):
    (d / "empty").mkdir()
    return d / "empty"


def mk_bag_dir(d):  # a rosbag2 directory given where a dataset is expected
    from badbags import demo_bag

    return demo_bag(d / "bag", episodes=1, seconds=0.5)["path"]


def mk_meta_corrupt(d):
    p = good_dataset(d / "ds")
    (p / "meta.json").write_text('{"format": "smiling_ros.dataset/1", ')
    return p


def mk_meta_list(d):
    p = good_dataset(d / "ds")
    (p / "meta.json").write_text("[1, 2]")
    return p


def mk_meta_format(d):
    p = good_dataset(d / "ds")
    m = json.loads((p / "meta.json").read_text())
    m["format"] = "lerobot/2"
    (p / "meta.json").write_text(json.dumps(m))
    return p


def mk_data_missing(d):
    p = good_dataset(d / "ds")
    (p / "data.safetensors").unlink()
    return p


def mk_data_truncated(d):
    p = good_dataset(d / "ds")
    f = p / "data.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    return p


def mk_data_pickle(d):
    p = good_dataset(d / "ds")
    torch.save({"obs": torch.zeros(3, OBS)}, p / "data.safetensors")
    return p


def mk_obs_nan(d):
    p = good_dataset(d / "ds")
    obs = np.zeros((120, OBS), np.float32)
    obs[5, 1] = np.nan
    edit_data(p, obs=obs)
    return p


def mk_obs_1d(d):
    p = good_dataset(d / "ds")
    edit_data(p, obs=np.zeros(120, np.float32))
    return p


def mk_act_rows(d):
    p = good_dataset(d / "ds")
    edit_data(p, act=np.zeros((119, ACT), np.float32))
    return p


def mk_ends_decreasing(d):
    p = good_dataset(d / "ds")
    edit_data(p, episode_ends=np.array([80, 40, 120], np.int64))
    return p


def mk_ends_past_end(d):
    p = good_dataset(d / "ds")
    edit_data(p, episode_ends=np.array([40, 80, 200], np.int64))
    return p


def mk_meta_dims(d):  # meta.json of one dataset beside the data of another
    p = good_dataset(d / "ds")
    m = json.loads((p / "meta.json").read_text())
    m["obs_dim"] = 11
    (p / "meta.json").write_text(json.dumps(m))
    return p


DATASETS = {
    "missing": (mk_missing, "dataset directory not found"),
    "a_file": (mk_file, "is a file, not a dataset directory"),
    "empty_dir": (mk_empty_dir, "not a dataset (no meta.json"),
    "bag_dir": (mk_bag_dir, "not a dataset (no meta.json"),
    "meta_corrupt": (mk_meta_corrupt, "meta.json: corrupt JSON"),
    "meta_not_object": (mk_meta_list, "expected a JSON object"),
    "meta_other_format": (mk_meta_format, "unsupported dataset format 'lerobot/2'"),
    "data_missing": (mk_data_missing, "data.safetensors missing"),
    "data_truncated": (mk_data_truncated, "data.safetensors: unreadable"),
    "data_is_pickle": (mk_data_pickle, "data.safetensors: unreadable"),
    "obs_nan": (mk_obs_nan, "NaN or inf"),
    "obs_1d": (mk_obs_1d, "'obs' must be a non-empty (N, obs_dim)"),
    "act_rows": (mk_act_rows, "'act' must be a (120, act_dim)"),
    "ends_decreasing": (mk_ends_decreasing, "'episode_ends' must be increasing"),
    "ends_past_end": (mk_ends_past_end, "'episode_ends' must be increasing"),
    "meta_dims_mismatch": (mk_meta_dims, "obs_dim is 11 but the data has 8"),
}

TRAIN_VERBS = ["train-smiling", "train-bc", "train-dac", "train-bridger", "train-dbc", "train-dydiff"]
FILE_OUT = {"train-bridger", "train-dbc", "train-dydiff", "train-expert"}  # --out is a checkpoint file


def train_argv(verb, dataset, out, **extra):
    argv = [verb, "--config", "arm_reach", "--dataset", dataset, "--out", out]
    if verb == "train-bridger":
        argv += ["--train-steps", "1", "--eval-episodes", "0", "--source", "gaussian", "--no-progress"]
    elif verb == "train-dbc":
        argv += ["--steps", "1", "--dm-steps", "1", "--quiet"]
    elif verb == "train-dydiff":
        argv += ["--steps", "1", "--ensemble-steps", "1", "--horizon", "8", "--quiet"]
    else:
        argv += ["--steps", "1", "--no-progress"]
    for k, v in extra.items():
        argv += [f"--{k.replace('_', '-')}", v]
    return [str(a) for a in argv]


def snapshot(root: Path) -> dict:
    """Every path under root with the hash of its content (directories: None)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
    return out


def previous_output(out: Path, verb: str) -> None:
    """What a previous successful run left at --out."""
    if verb in FILE_OUT:
        save_checkpoint(out, {"w": torch.ones(3)}, {"kind": "previous"})
    elif verb == "rollout" or verb == "import-bag":
        good_dataset(out, n_eps=1, steps=5)
    else:
        out.mkdir()
        (out / "keep.txt").write_text("previous run")


def expect_one_line_and_nothing_written(capsys, work, argv, words):
    """Run argv with --out absent, then with a previous --out and --overwrite: one line, status 2,
    nothing changed."""
    verb = argv[0]
    out = Path(argv[argv.index("--out") + 1])
    for previous in (False, True):
        if previous:
            previous_output(out, verb)
            argv = argv + ["--overwrite"]  # even allowed to replace it, a failing run changes nothing
        before = snapshot(work)
        rc = main(argv)
        cap = capsys.readouterr()
        lines = cap.err.strip().splitlines()
        assert rc == 2, (argv, cap.err)
        assert len(lines) == 1, (argv, cap.err)
        assert "Traceback" not in cap.err + cap.out
        assert lines[0].startswith(f"smiling-ros {verb}: error: "), lines[0]
        for w in words:  # each word, or one of its '|' alternatives
            assert any(alt in lines[0] for alt in w.split("|")), (w, lines[0])
        assert snapshot(work) == before, argv  # nothing created, nothing changed, no temp files
    if out.is_dir():
        shutil.rmtree(out)
    elif out.exists():
        out.unlink()
        out.with_suffix(".json").unlink(missing_ok=True)


@pytest.mark.parametrize("case", sorted(DATASETS))
def test_training_verbs_refuse_bad_datasets(tmp_path, capsys, case):
    make, words = DATASETS[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    ds = make(inputs)
    for verb in TRAIN_VERBS:
        out = tmp_path / ("out.safetensors" if verb in FILE_OUT else "out")
        expect_one_line_and_nothing_written(capsys, tmp_path, train_argv(verb, ds, out), [str(ds), words])


# --------------------------------------------------------------------------- checkpoints as inputs
def ck_missing(d):
    return d / "nope.safetensors"


def ck_empty_dir(d):
    (d / "runs").mkdir()
    return d / "runs"


def ck_pickle(d):
    class Payload:
        def __reduce__(self):
            return (open, (str(d / "PWNED"), "w"))

    torch.save({"actor.mu.weight": torch.zeros(2, 8), "x": Payload()}, d / "policy.pt")
    return d / "policy.pt"


def ck_truncated(d):
    from smiling_ros.data.dataset import Normalizer
    from smiling_ros.learn.policy import MlpActor, MlpPolicy

    p = MlpPolicy(MlpActor(OBS, ACT, [16]), Normalizer.identity(OBS), -np.ones(ACT), np.ones(ACT),
                  {"task": "smiling_ros/ArmReach-v0"}).save(d / "policy")
    p.write_bytes(p.read_bytes()[:-64])
    return p


def ck_dataset_dir(d):
    return good_dataset(d / "ds")


def ck_other_dims(d):
    from smiling_ros.data.dataset import Normalizer
    from smiling_ros.learn.policy import MlpActor, MlpPolicy

    return MlpPolicy(MlpActor(5, ACT, [16]), Normalizer.identity(5), -np.ones(ACT), np.ones(ACT),
                     {"task": "smiling_ros/ArmReach-v0"}).save(d / "other")


CHECKPOINTS = {
    "missing": (ck_missing, "checkpoint not found|neither"),
    "empty_dir": (ck_empty_dir, "holds no .safetensors checkpoint"),
    "pickle": (ck_pickle, "refusing to load it"),
    "truncated": (ck_truncated, "not a readable safetensors checkpoint"),
    "dataset_dir": (ck_dataset_dir, "not a smiling_ros checkpoint"),
    "other_dims": (ck_other_dims, "obs_dim is 5|is a 'mlp_policy' checkpoint"),
}


def checkpoint_argvs(ck, ds, work):
    ck = str(ck)
    return [
        ["rollout", "--config", "arm_reach", "--policy", ck, "--episodes", "1", "--out", str(work / "out")],
        train_argv("train-bridger", ds, work / "out.safetensors") + ["--source", ck],
        train_argv("train-dbc", ds, work / "out.safetensors") + ["--dm", ck],
        train_argv("train-smiling", ds, work / "out") + ["--world-model", ck],
    ]


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_verbs_refuse_bad_checkpoints(tmp_path, capsys, case):
    make, words = CHECKPOINTS[case]
    inputs = tmp_path / "in"
    inputs.mkdir()
    ck = make(inputs)
    ds = good_dataset(inputs / "good_ds")
    # eval writes nothing: one line, and the filesystem unchanged
    before = snapshot(tmp_path)
    assert main(["eval", "--checkpoint", str(ck), "--episodes", "1", "--config", "arm_reach"]) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in cap.err + cap.out, cap.err
    assert any(w in lines[0] for w in words.split("|")), lines[0]
    assert snapshot(tmp_path) == before
    for argv in checkpoint_argvs(ck, ds, tmp_path):
        if case == "other_dims" and argv[0] in ("train-dbc", "train-smiling"):
            continue  # --dm / --world-model take other kinds of checkpoint (refused by kind, as dataset_dir shows)
        expect_one_line_and_nothing_written(capsys, tmp_path, argv, [words])
    assert not (inputs / "PWNED").exists()


# --------------------------------------------------------------------------- other inputs
def test_other_missing_inputs(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    ds = good_dataset(inputs / "ds")
    cases = [
        (["import-bag", str(inputs / "nope.mcap"), "--config", "arm_reach", "--out", str(tmp_path / "out")],
         ["nope.mcap: bag not found"]),
        (["import-bag", str(ds), "--config", "arm_reach", "--out", str(tmp_path / "out")], ["not a rosbag2 directory"]),
        (train_argv("train-smiling", ds, tmp_path / "out") + ["--resume"], ["nothing to resume"]),
        (["train-expert", "--config", "arm_reach", "--out", str(tmp_path / "out.safetensors"), "--resume", "--steps",
          "1", "--no-progress"], ["nothing to resume"]),
        (train_argv("train-smiling", ds, tmp_path / "out", seed=-1), ["--seed: must be >= 0"]),
        (["rollout", "--config", "arm_reach", "--episodes", "1", "--seed", "-4", "--out", str(tmp_path / "out")],
         ["--seed: must be >= 0"]),
        (["eval", "--checkpoint", "random", "--config", "arm_reach", "--episodes", "0"], ["--episodes"]),
        (train_argv("train-bc", ds, tmp_path / "out", steps=-5), ["--steps"]),
    ]
    for argv, words in cases:
        if "--out" in argv:
            expect_one_line_and_nothing_written(capsys, tmp_path, argv, words)
        else:
            assert main(argv) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and all(w in err[0] for w in words), err


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_argument_errors_are_one_line(capsys, verb):
    argv = [verb, "--no-such-flag"] if verb != "demo" else [verb, "--budget", "enormous"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"smiling-ros {verb}: error: "), err
    assert f"see 'smiling-ros {verb} --help'" in err[0]


def test_unknown_verb_is_one_line(capsys):
    assert main(["trian-smiling"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "unknown verb 'trian-smiling'" in err[-1]


# --------------------------------------------------------------------------- interrupted dataset saves
def test_failing_dataset_save_keeps_previous(tmp_path, monkeypatch):
    import safetensors.numpy

    out = good_dataset(tmp_path / "ds", n_eps=2)
    before = snapshot(tmp_path)

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 50)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.numpy, "save_file", disk_full)
    with pytest.raises(UserError, match="ds: cannot write dataset .no space left on device."):
        good_dataset(out, n_eps=3)
    assert snapshot(tmp_path) == before  # previous dataset intact, no temporary directory left
    assert Dataset.load(out).num_episodes == 2


def test_sigkill_during_dataset_save_leaves_a_dataset(tmp_path):
    """A child re-saves a dataset in a loop and is SIGKILLed at random moments: afterwards the dataset
    loads (old or new version), or, in the instant between the two renames, the error names the
    previous version that is kept beside it."""
    out = tmp_path / "ds"
    rows = 20_000  # a save takes ~20 ms, mostly writing
    Dataset(np.zeros((rows, OBS), np.float32), None, [rows], {"k": 0}).save(out)
    rng = random.Random(1)
    loaded = mid_write = 0
    for it in range(12):
        pid = os.fork()
        if pid == 0:
            try:
                k = 0
                while True:
                    k += 1
                    Dataset(np.full((rows, OBS), k, np.float32), None, [rows], {"k": k}).save(out)
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0.02, 0.2))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".ds.") and p.name != ".ds.old"]
        mid_write += bool(temps)
        try:
            ds = Dataset.load(out)
        except UserError as exc:
            assert "a save was interrupted" in str(exc) and ".ds.old" in str(exc)
            os.replace(tmp_path / ".ds.old", out)  # what the message tells the user to do
            ds = Dataset.load(out)
        assert np.all(ds.obs == ds.meta["k"])  # data and meta of the same version
        loaded += 1
        for p in temps:  # the killed save's temporary directory
            shutil.rmtree(p)
    assert loaded == 12 and mid_write >= 3  # most kills landed inside a save


def test_save_failing_between_the_renames_puts_the_previous_back(tmp_path, monkeypatch):
    import smiling_ros.data.dataset as dataset_mod

    out = good_dataset(tmp_path / "ds", n_eps=2)
    real = os.replace
    calls = []

    def second_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new version moving into place
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(dataset_mod.os, "replace", second_fails)
    with pytest.raises(UserError, match="Input/output error"):
        good_dataset(out, n_eps=3)
    monkeypatch.setattr(dataset_mod.os, "replace", real)
    assert Dataset.load(out).num_episodes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
