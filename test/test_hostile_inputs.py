"""Generated corpora of hostile inputs and file-system states, one per class of failure, run through
the real CLI entry point (``smiling_ros.cli:main``, the ``smiling-ros`` console script) in child
processes with a time limit per case (test/cli_batch.py), plus the installed console script itself
for the cases that hang a process.

Every refused case must: not hang, print no traceback, exit non-zero, print exactly one stderr line
that names the input, and leave the directory exactly as before (hashes of every file; no partial
output, no temporary file, nothing pre-existing changed). Cases are generated with hypothesis
(ids, sizes, nestings, names, integers) and by enumerating file kinds x input roles.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from cli_batch import check_refusal, run_batch, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smiling_ros.data.dataset import Dataset, Normalizer
from smiling_ros.learn.policy import MlpActor, MlpPolicy

# Every class runs the CLI in child processes over generated corpora: the whole suite's lane.
pytestmark = pytest.mark.slow

ARM = "smiling_ros/ArmReach-v0"
OBS, ACT = 8, 2
REPO = Path(__file__).resolve().parent.parent
ARM_CFG = yaml.safe_load((REPO / "config" / "arm_reach.yaml").read_text())
COLLECT = settings(max_examples=40, database=None, deadline=None, derandomize=True,
                   suppress_health_check=list(HealthCheck))


def collect(strategy, n: int = 40) -> list:
    """``n`` examples drawn by hypothesis (deterministic), to be run as one batch."""
    out: list = []

    @given(strategy)
    @settings(COLLECT, max_examples=n)
    def draw(x):
        out.append(x)

    draw()
    return out


def good_dataset(path: Path, n_eps: int = 2, steps: int = 30) -> Path:
    rng = np.random.default_rng(0)
    eps = [(rng.normal(size=(steps, OBS)).astype(np.float32), rng.uniform(-1, 1, (steps, ACT)).astype(np.float32))
           for _ in range(n_eps)]
    return Dataset.from_episodes(eps, {"task": ARM, "rate_hz": 20.0}).save(path)


def good_policy(path: Path, **meta) -> Path:
    torch.manual_seed(0)
    pol = MlpPolicy(MlpActor(OBS, ACT, [16]), Normalizer.identity(OBS), -np.ones(ACT), np.ones(ACT),
                    {"task": ARM, **meta})
    return pol.save(path)


def edit_header(path: Path, fn) -> None:
    """Rewrite a safetensors file's JSON header with ``fn(header) -> header`` (same tensor bytes)."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = fn(json.loads(raw[8:8 + n]))
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])


def edit_meta(path: Path, fn) -> None:
    def f(h):
        h["__metadata__"]["smiling_ros"] = fn(h["__metadata__"]["smiling_ros"])
        return h

    edit_header(path, f)


def nested(depth: int, leaf="x", kind: str = "list") -> str:
    return ("[" * depth + json.dumps(leaf) + "]" * depth) if kind == "list" else \
        ('{"a":' * depth + json.dumps(leaf) + "}" * depth)


def make_special(path: Path, kind: str) -> Path:
    """A non-regular file of ``kind`` at ``path``."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", path)
    elif kind == "dev_null":
        os.symlink("/dev/null", path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    elif kind == "directory":
        path.mkdir()
    elif kind == "dangling_link":
        os.symlink(path.with_name(path.name + ".nowhere"), path)
    elif kind == "link_loop":
        os.symlink(path.name, path)
    else:
        raise ValueError(kind)
    return path


SPECIAL_KINDS = ["fifo", "dev_zero", "dev_null", "socket", "directory", "dangling_link", "link_loop"]


def train_argv(verb: str, dataset, out, config="arm_reach") -> list[str]:
    argv = [verb, "--config", str(config), "--dataset", str(dataset), "--out", str(out)]
    argv += {"train-bridger": ["--train-steps", "1", "--eval-episodes", "0", "--source", "gaussian",
                               "--no-progress"],
             "train-dbc": ["--steps", "1", "--dm-steps", "1", "--quiet"],
             "train-dydiff": ["--steps", "1", "--ensemble-steps", "1", "--horizon", "8", "--quiet"]
             }.get(verb, ["--steps", "1", "--no-progress"])
    return argv


# =========================================================================== 1. code from files
ENV_IDS = st.one_of(
    st.from_regex(r"\A[a-z_][a-z0-9_]{0,10}(\.[a-z_][a-z0-9_]{0,6}){0,2}:[A-Za-z_][A-Za-z0-9_]{0,10}\Z"),
    st.from_regex(r"\A[a-z][a-z0-9_]{0,8}/[A-Z][A-Za-z]{0,8}-v[0-9]\Z"),  # a namespace gymnasium may import
    st.sampled_from(["evilmod:Env", "evilmod:make", "evilpkg.sub:Env", "os:system", "subprocess:Popen",
                     "builtins:exec", "evilmod/Evil-v0", "gymnasium.envs.mujoco.hopper_v5:HopperEnv"]),
)


def test_class1_checkpoint_config_never_imports_code(tmp_path):
    """eval without --config takes the task from the checkpoint: an id that would make Gymnasium
    import a module is refused, and a module planted on the path is never imported."""
    marker = tmp_path / "IMPORTED"
    for name in ("evilmod", "evilpkg"):
        code = f"open({str(marker)!r}, 'w').write({name!r})\nclass Env: pass\ndef make(**k): pass\n"
        if name == "evilpkg":
            (tmp_path / name).mkdir()
            (tmp_path / name / "__init__.py").write_text(code)
            (tmp_path / name / "sub.py").write_text(code)
        else:
            (tmp_path / f"{name}.py").write_text(code)
    ids = collect(ENV_IDS, 60)
    cases = []
    for i, env_id in enumerate(ids):
        cfg = dict(ARM_CFG, task={"env": env_id, "max_episode_steps": 5})
        ck = good_policy(tmp_path / f"ck{i}.safetensors", config=cfg, task=env_id)
        cases.append({"argv": ["eval", "--checkpoint", str(ck), "--episodes", "1"], "ck": str(ck)})
    before = snapshot(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    results = run_batch(cases, tmp_path, env=env)
    for res in results:
        check_refusal(res, [res["ck"]], ["never imported|is a"], before, snapshot(tmp_path), "class 1")
    assert not marker.exists()
    # the control: the same id in the user's own config is the user's choice (and does import)
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump(dict(ARM_CFG, task={"env": "evilmod:Env"})))
    run_batch([{"argv": ["eval", "--checkpoint", "random", "--config", str(own), "--episodes", "1"]}], tmp_path,
              env=env)
    assert marker.exists()
    print(f"class 1: {len(results)} generated cases refused, no module imported")


# =========================================================================== 2. special files
def _special_roles(d: Path, kind: str) -> list[dict]:
    """(argv, names) for each input role with a special file of ``kind`` put in its place."""
    good = d / "good_ds"
    if not good.exists():
        good_dataset(good)
        good_policy(d / "good.safetensors")
    k = d / kind
    k.mkdir()
    cases = []

    def case(role, argv, *names):
        cases.append({"argv": [str(a) for a in argv], "names": [str(n) for n in names], "role": role, "kind": kind})

    case("config", train_argv("train-bc", good, k / "o1", config=make_special(k / "cfg.yaml", kind)), k / "cfg.yaml")
    case("config/eval", ["eval", "--checkpoint", "random", "--config", k / "cfg.yaml", "--episodes", "1"],
         k / "cfg.yaml")
    case("checkpoint", ["eval", "--checkpoint", make_special(k / "ck.safetensors", kind), "--config", "arm_reach",
                        "--episodes", "1"], k / "ck.safetensors")
    case("--source", train_argv("train-bridger", good, k / "o2.safetensors") + ["--source", k / "ck.safetensors"],
         k / "ck.safetensors")
    case("--dm", train_argv("train-dbc", good, k / "o3.safetensors") + ["--dm", k / "ck.safetensors"],
         k / "ck.safetensors")
    case("--world-model", train_argv("train-smiling", good, k / "o4") + ["--world-model", k / "ck.safetensors"],
         k / "ck.safetensors")
    if kind != "directory":
        case("--dataset", train_argv("train-dbc", make_special(k / "ds_itself", kind), k / "o5.safetensors"),
             k / "ds_itself")
    for f in ("meta.json", "data.safetensors"):
        ds = k / f"ds_{f.split('.')[0]}"
        good_dataset(ds)
        (ds / f).unlink()
        make_special(ds / f, kind)
        case(f"dataset/{f}", train_argv("train-bc", ds, k / "o6"), ds)
    bagdir = k / "bag"
    from badbags import demo_bag, storage_file

    demo_bag(bagdir, "mcap", episodes=1, seconds=0.5)
    sf = storage_file(bagdir)
    mcap_bytes = sf.read_bytes()
    (bagdir / "metadata.yaml").unlink()
    make_special(bagdir / "metadata.yaml", kind)
    case("bag metadata.yaml", ["import-bag", bagdir, "--config", "arm_reach", "--out", k / "o7"], bagdir)
    bag2 = k / "bag2"
    demo_bag(bag2, "mcap", episodes=1, seconds=0.5)
    sf2 = storage_file(bag2)
    sf2.unlink()
    make_special(sf2, kind)
    case("bag storage file", ["import-bag", bag2, "--config", "arm_reach", "--out", k / "o8"], bag2)
    case("bare .mcap", ["import-bag", make_special(k / "x.mcap", kind), "--config", "arm_reach", "--out",
                        k / "o9"], k / "x.mcap")
    del mcap_bytes
    return cases


def test_class2_special_files_never_hang(tmp_path):
    cases = []
    for kind in SPECIAL_KINDS:
        cases += _special_roles(tmp_path, kind)
    before = snapshot(tmp_path)
    results = run_batch(cases, tmp_path, case_timeout_s=60)
    for res in results:
        check_refusal(res, res["names"], [], before, snapshot(tmp_path), f"class 2 {res['role']} {res['kind']}")
    print(f"class 2: {len(results)} cases ({len(SPECIAL_KINDS)} kinds x {len(results) // len(SPECIAL_KINDS)} roles)")


def test_class2_fifo_through_the_console_script(tmp_path):
    """The installed console script, given FIFOs as config and checkpoint: one line, no hang."""
    import shutil

    exe = shutil.which("smiling-ros", path=os.path.dirname(sys.executable)) or shutil.which("smiling-ros")
    if exe is None:
        pytest.skip("smiling-ros console script not installed")
    fifo = make_special(tmp_path / "pipe", "fifo")
    for argv in (["eval", "--checkpoint", "random", "--config", str(fifo), "--episodes", "1"],
                 ["eval", "--checkpoint", str(fifo), "--config", "arm_reach", "--episodes", "1"]):
        p = subprocess.run([exe] + argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and str(fifo) in lines[0] and "FIFO" in lines[0], p.stderr


def test_class2_loader_is_never_blocked(tmp_path):
    """Announcements of special files are refused at once and a good checkpoint after them loads;
    a load that blocks for good (a FIFO opened without the check) is abandoned once a newer
    announcement waits."""
    from smiling_ros.control.loader import PolicyLoader
    from smiling_ros.learn.policy import load_policy

    good = good_policy(tmp_path / "good.safetensors")
    bad = [make_special(tmp_path / f"a_{k}", k) for k in SPECIAL_KINDS]
    loaded, errors = [], []
    loader = PolicyLoader(lambda p: load_policy(p, device="cpu", obs_dim=OBS, act_dim=ACT),
                          lambda pol, p: loaded.append(p), lambda p, why: errors.append(why))
    for b in bad:
        loader.request(str(b))
        deadline = time.monotonic() + 60
        while len(errors) < bad.index(b) + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    loader.request(str(good))
    deadline = time.monotonic() + 60
    while not loaded and time.monotonic() < deadline:
        time.sleep(0.01)
    loader.close()
    assert loaded == [str(good)] and len(errors) == len(bad), errors
    assert all("\n" not in e for e in errors)

    stuck = make_special(tmp_path / "stuck", "fifo")
    got = []
    blocking = PolicyLoader(lambda p: open(p).read() if p == str(stuck) else p, lambda pol, p: got.append(p),
                            lambda p, why: None, stuck_after_s=0.2)
    blocking.request(str(stuck))
    time.sleep(0.1)
    blocking.request("next")
    deadline = time.monotonic() + 60
    while not got and time.monotonic() < deadline:
        time.sleep(0.01)
    assert got == ["next"]
    blocking.close()
    with open(os.open(stuck, os.O_WRONLY | os.O_NONBLOCK), "w"):  # release the abandoned reader
        pass


# =========================================================================== 3. sizes
SIZE_EDITS = st.one_of(
    st.builds(lambda h: ("hidden", [h]), st.integers(2**16, 2**40)),
    st.builds(lambda hs: ("hidden", hs), st.lists(st.integers(1, 2**30), min_size=2, max_size=6)),
    st.builds(lambda n: ("hidden", [16] * n), st.integers(2, 10**6)),
    st.builds(lambda d: ("obs_dim", d), st.integers(2**20, 2**62)),
    st.builds(lambda d: ("meta_depth", d), st.integers(65, 50_000)),
    st.builds(lambda d: ("integrity_depth", d), st.integers(65, 50_000)),
    st.builds(lambda d: ("dataset_meta_depth", d), st.integers(65, 50_000)),
    st.builds(lambda dt: ("relabel", dt), st.sampled_from(["I32", "U32", "F16", "BF16", "I64", "F64", "U8"])),
)


def _size_case(d: Path, i: int, edit) -> dict:
    what, value = edit
    ck = good_policy(d / f"ck{i}.safetensors")
    if what in ("hidden", "obs_dim"):
        edit_meta(ck, lambda s: json.dumps({**json.loads(s), what: value}))
    elif what == "meta_depth":
        edit_meta(ck, lambda s: json.dumps({**json.loads(s), "notes": "X"}).replace('"X"', nested(value)))
    elif what == "integrity_depth":
        edit_header(ck, lambda h: {**h, "__metadata__": {**h["__metadata__"],
                                                          "smiling_ros.integrity": nested(value, kind="dict")}})
    elif what == "relabel":
        def relabel(h):
            del h["__metadata__"]["smiling_ros.integrity"]
            t = h["actor.mu.weight"]
            size = {"F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I64": 8, "F64": 8, "U8": 1}
            n = (t["data_offsets"][1] - t["data_offsets"][0]) // size[value]
            t["dtype"], t["shape"] = value, [n]
            return h
        edit_header(ck, relabel)
    if what == "dataset_meta_depth":
        ds = good_dataset(d / f"ds{i}")
        (ds / "meta.json").write_text(json.dumps({"format": "smiling_ros.dataset/1", "x": "X"})
                                      .replace('"X"', nested(value, kind="dict")))
        return {"argv": train_argv("train-bc", ds, d / f"out{i}"), "names": [str(ds)], "edit": what}
    return {"argv": ["eval", "--checkpoint", str(ck), "--config", "arm_reach", "--episodes", "1"],
            "names": [str(ck)], "edit": what}


def test_class3_sizes_checked_before_allocation(tmp_path):
    edits = collect(SIZE_EDITS, 50)
    cases = [_size_case(tmp_path, i, e) for i, e in enumerate(edits)]
    before = snapshot(tmp_path)
    results = run_batch(cases, tmp_path)
    for res in results:
        check_refusal(res, res["names"], [], before, snapshot(tmp_path), f"class 3 {res['edit']}")
    peak_mb = results[0]["maxrss_kb"] / 1024
    assert peak_mb < 1500, f"peak memory {peak_mb:.0f} MB: something was allocated from metadata"
    print(f"class 3: {len(results)} generated cases refused; child peak RSS {peak_mb:.0f} MB")


# =========================================================================== 4. OS errors
def test_class4_os_errors_are_one_line(tmp_path):
    ds = good_dataset(tmp_path / "ds")
    from badbags import demo_bag

    bag = demo_bag(tmp_path / "bag", "mcap", episodes=2, seconds=1.0)["path"]
    (tmp_path / "a_file").write_text("precious")
    (tmp_path / "real_dir").mkdir()
    os.symlink("real_dir", tmp_path / "link_dir")
    os.symlink("a_file", tmp_path / "link_file")
    outs_dir = ["a_file", ".", "", "/", "..", "a_file/sub", "link_dir", "/sys/smiling_ros_out", "/proc/version/x"]
    outs_file = ["real_dir", "", ".", "a_file/x.safetensors", "link_file", "/sys/x.safetensors", "/proc/1/x"]
    cases = []
    for out in outs_dir:
        for argv in (["import-bag", str(bag), "--config", "arm_reach", "--out", out],
                     train_argv("train-bc", ds, out), train_argv("train-smiling", ds, out),
                     ["rollout", "--config", "arm_reach", "--policy", "random", "--episodes", "1", "--out", out]):
            cases.append({"argv": argv, "target": out})
    for out in outs_file:
        for verb in ("train-dbc", "train-bridger", "train-dydiff"):
            cases.append({"argv": train_argv(verb, ds, out), "target": out})
    before = snapshot(tmp_path)
    results = run_batch(cases, tmp_path)
    for res in results:
        names = [res["target"]] if res["target"] not in ("", ".") else ["--out"]
        check_refusal(res, names, [], before, snapshot(tmp_path), "class 4")
    # a full disk (writes beyond RLIMIT_FSIZE fail with EFBIG): one line naming the file, nothing left
    from badbags import write_config

    bag_cfg = write_config(tmp_path / "bag_cfg.yaml")
    full = [{"argv": ["import-bag", str(bag), "--config", str(bag_cfg), "--out", str(tmp_path / "f1")]},
            {"argv": train_argv("train-bc", ds, tmp_path / "f2")},
            {"argv": train_argv("train-dbc", ds, tmp_path / "f3.safetensors")},
            {"argv": train_argv("train-bridger", ds, tmp_path / "f4.safetensors")},
            {"argv": ["rollout", "--config", "arm_reach", "--policy", "random", "--episodes", "2", "--out",
                      str(tmp_path / "f5")]}]
    before = snapshot(tmp_path)
    results_full = run_batch(full, tmp_path, fsize_limit=2048)
    for res in results_full:
        check_refusal(res, [str(tmp_path)], ["cannot|file too large"], before, snapshot(tmp_path), "class 4 disk full")
    print(f"class 4: {len(results) + len(results_full)} cases")


# =========================================================================== 5. data loss
NAMES = st.from_regex(r"\A[a-z][a-z0-9_]{0,8}(\.[a-z0-9]{1,4})?\Z")
FILE_VERBS = {"train-dbc": [".json", "_log.csv", "_log.png", ".dm.safetensors"],
              "train-bridger": [".json", ".train.csv", ".train.png", ".eval.json"],
              "train-dydiff": [".json", "_log.csv", "_log.png"]}
DIR_VERBS = ["import-bag", "rollout", "train-bc", "train-smiling", "train-dac"]


def test_class5_nothing_replaced_without_overwrite(tmp_path):
    from smiling_ros.io.outputs import sibling
    from smiling_ros.learn.checkpoint import checkpoint_path

    ds = good_dataset(tmp_path / "ds")
    from badbags import demo_bag

    bag = demo_bag(tmp_path / "bag", "mcap", episodes=2, seconds=1.0)["path"]
    drawn = collect(st.tuples(NAMES, st.sampled_from(sorted(FILE_VERBS) + DIR_VERBS), st.integers(0, 10)), 60)
    cases = []
    for i, (name, verb, which) in enumerate(drawn):
        d = tmp_path / f"c{i}"
        d.mkdir()
        if verb in FILE_VERBS:
            out = d / name
            target = checkpoint_path(out)
            tags = FILE_VERBS[verb]
            victim = target if which >= len(tags) else sibling(target, tags[which])  # the file that exists
            victim.write_text("someone else's file")
            argv = train_argv(verb, ds, out)
        else:
            out = d / name
            out.mkdir()
            (out / "notes.txt").write_text("keep me")
            victim = out
            argv = (["import-bag", str(bag), "--config", "arm_reach", "--out", str(out)] if verb == "import-bag" else
                    ["rollout", "--config", "arm_reach", "--policy", "random", "--episodes", "1", "--out", str(out)]
                    if verb == "rollout" else train_argv(verb, ds, out))
        cases.append({"argv": argv, "victim": str(victim)})
    before = snapshot(tmp_path)
    results = run_batch(cases, tmp_path)
    for res in results:
        check_refusal(res, [res["victim"]], ["refusing|already"], before, snapshot(tmp_path), "class 5")
    # --overwrite into a directory holding other files: the dataset refuses, nothing lost
    out = tmp_path / "c0_dir"
    out.mkdir()
    (out / "policy.safetensors").write_text("a trained policy")
    before = snapshot(tmp_path)
    (res,) = run_batch([{"argv": ["import-bag", str(bag), "--config", "arm_reach", "--out", str(out),
                                  "--overwrite"]}], tmp_path)
    check_refusal(res, [str(out)], ["not a dataset|not part of a dataset"], before, snapshot(tmp_path),
                  "class 5 overwrite")
    print(f"class 5: {len(results) + 1} generated cases refused")


def test_class5_output_names_are_literal(tmp_path):
    ds = good_dataset(tmp_path / "ds")
    (tmp_path / "model.safetensors").write_text("unrelated")
    (tmp_path / "results.json").write_text("unrelated results")
    before = {k: v for k, v in snapshot(tmp_path).items() if k in ("model.safetensors", "results.json")}
    (a, b) = run_batch([{"argv": train_argv("train-dbc", ds, tmp_path / "model.v2")},
                        {"argv": train_argv("train-dbc", ds, tmp_path / "results")}], tmp_path)
    assert a["rc"] == 0, a["err"]
    assert (tmp_path / "model.v2").is_file() and (tmp_path / "model.v2.json").is_file()
    check_refusal(b, [str(tmp_path / "results.json")], ["refusing"])
    after = snapshot(tmp_path)
    assert all(after[k] == v for k, v in before.items())


# =========================================================================== 6. two writers
def test_class6_second_writer_names_the_holder(tmp_path):
    from smiling_ros.io.outputs import prepare_output

    ds = good_dataset(tmp_path / "ds")
    from badbags import demo_bag

    bag = demo_bag(tmp_path / "bag", "mcap", episodes=2, seconds=1.0)["path"]
    held = [prepare_output(tmp_path / "run", "dir"), prepare_output(tmp_path / "p.safetensors", "file"),
            prepare_output(tmp_path / "data", "dir")]
    try:
        cases = [{"argv": train_argv(v, ds, tmp_path / "run")} for v in ("train-bc", "train-smiling", "train-dac")]
        cases += [{"argv": train_argv(v, ds, tmp_path / "p.safetensors")} for v in FILE_VERBS]
        cases += [{"argv": ["import-bag", str(bag), "--config", "arm_reach", "--out", str(tmp_path / "data")]},
                  {"argv": ["rollout", "--config", "arm_reach", "--policy", "random", "--episodes", "1", "--out",
                            str(tmp_path / "data")]}]
        before = snapshot(tmp_path)
        results = run_batch(cases, tmp_path)
        for res in results:
            check_refusal(res, [str(tmp_path)], [f"pid {os.getpid()}"], before, snapshot(tmp_path), "class 6")
    finally:
        for h in held:
            h.close()
    assert not list(tmp_path.glob(".*.lock"))  # released locks leave no file


# =========================================================================== 7. unbounded parsing
def bomb(width: int, depth: int) -> str:
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    for i in range(1, depth):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines)


def test_class7_yaml_bounded(tmp_path):
    base = yaml.safe_dump(ARM_CFG, sort_keys=False)
    drawn = collect(st.one_of(
        st.tuples(st.just("bomb"), st.integers(2, 12), st.integers(6, 14)),
        st.tuples(st.just("dup"), st.sampled_from(["rate_hz", "seed", "task", "observation", "topics"]),
                  st.integers(0, 3)),
        st.tuples(st.just("nested_dup"), st.sampled_from(["gap_s", "min_episode_steps", "max_abs"]), st.just(0)),
        st.tuples(st.just("deep"), st.integers(65, 20_000), st.sampled_from(["[", "{a: "])),
        st.tuples(st.just("aliases"), st.integers(101, 2000), st.just(0)),
    ), 50)
    cases = []
    for i, (kind, a, b) in enumerate(drawn):
        p = tmp_path / f"c{i}.yaml"
        if kind == "bomb":
            if a ** b < 2_000_000:
                a, b = 9, 8  # an expansion too small to be a bomb is no test of the bound
            text = base.replace("task:\n", "task:\n  env_kwargs:\n" + "\n".join(
                "    " + ln for ln in bomb(a, b).splitlines()) + "\n", 1)
            words = ["alias"]
        elif kind == "dup":
            text = base + "\n" * b + f"{a}: {yaml.safe_dump(ARM_CFG[a], default_flow_style=True).strip()}\n"
            words = [f"duplicate key '{a}'", "line"]
        elif kind == "nested_dup":
            text = base.replace("import:\n", f"import:\n  {a}: 1\n", 1)
            words = [f"duplicate key '{a}'"]
        elif kind == "deep":
            close = "]" if b == "[" else "}"
            text = base + "extra: " + b * a + "1" + close * a + "\n"
            words = ["nest|deep"]
        else:
            text = base + "anchor: &a 1\nmany: [" + ", ".join(["*a"] * a) + "]\n"
            words = ["alias"]
        p.write_text(text)
        cases.append({"argv": ["eval", "--checkpoint", "random", "--config", str(p), "--episodes", "1"],
                      "names": [str(p)], "words": words, "kind": kind})
    big = tmp_path / "big.yaml"
    with open(big, "w") as f:
        f.write(base)
        chunk = "".join(f"k{i}: {i}\n" for i in range(100_000))
        while f.tell() < 17 * 1024 * 1024:
            f.write(chunk.replace("k", f"k{f.tell()}_"))
    cases.append({"argv": ["eval", "--checkpoint", "random", "--config", str(big), "--episodes", "1"],
                  "names": [str(big)], "words": ["bytes"], "kind": "big"})
    before = snapshot(tmp_path)
    results = run_batch(cases, tmp_path, case_timeout_s=60)
    for res in results:
        check_refusal(res, res["names"], res["words"], before, snapshot(tmp_path), f"class 7 {res['kind']}")
    print(f"class 7: {len(results)} generated cases refused")


def test_class7_duplicate_key_in_bag_metadata(tmp_path):
    from badbags import demo_bag

    bag = demo_bag(tmp_path / "bag", "mcap", episodes=1, seconds=0.5)["path"]
    meta = bag / "metadata.yaml"
    meta.write_text(meta.read_text().replace("rosbag2_bagfile_information:\n",
                                             "rosbag2_bagfile_information:\n  version: 1\n", 1))
    before = snapshot(tmp_path)
    (res,) = run_batch([{"argv": ["import-bag", str(bag), "--config", "arm_reach", "--out", str(tmp_path / "o")]}],
                       tmp_path)
    check_refusal(res, [str(meta)], ["duplicate key 'version'"], before, snapshot(tmp_path))


# =========================================================================== 8. values at the edge
TOPIC_TEXT = st.one_of(
    st.text(alphabet=st.sampled_from(list("/_aZ09 ~{}.-:ä\t")), max_size=20),
    st.from_regex(r"\A(/[A-Za-z_][A-Za-z0-9_]{0,6}){1,4}\Z"),
    st.builds(lambda n: "/" + "a" * n, st.integers(240, 260)),
)


@given(TOPIC_TEXT)
@settings(max_examples=400, database=None, deadline=None)
def test_class8_topic_rules_agree_with_ros(name):
    """The project's topic-name rules agree with ROS's own implementation (rmw via rclpy)."""
    rclpy_validate = pytest.importorskip("rclpy.validate_full_topic_name").validate_full_topic_name
    from rclpy.exceptions import InvalidTopicNameException

    from smiling_ros.config import topic_name_problem

    try:
        rclpy_validate(name)
        ros_ok = True
    except (InvalidTopicNameException, ValueError, TypeError):
        ros_ok = False
    assert (topic_name_problem(name) is None) == ros_ok, (name, topic_name_problem(name))


@given(st.text(alphabet=st.sampled_from(list("aZ_09 -./~ä")), max_size=12) | st.builds(lambda n: "a" * n,
                                                                                       st.integers(250, 260)))
@settings(max_examples=200, database=None, deadline=None)
def test_class8_node_rules_agree_with_ros(name):
    validate = pytest.importorskip("rclpy.validate_node_name").validate_node_name
    from rclpy.exceptions import InvalidNodeNameException

    from smiling_ros.config import node_name_problem

    try:
        validate(name)
        ros_ok = True
    except (InvalidNodeNameException, ValueError, TypeError):
        ros_ok = False
    assert (node_name_problem(name) is None) == ros_ok, (name, node_name_problem(name))


def test_class8_values_refused_at_load(tmp_path):
    from smiling_ros.config import topic_name_problem

    bad_topics = [t for t in collect(TOPIC_TEXT, 80) if topic_name_problem(t)]
    big = collect(st.one_of(st.integers(2**32, 2**70), st.integers(-(2**70), -1)), 30)
    ds = good_dataset(tmp_path / "ds")
    cases = []
    for i, t in enumerate(bad_topics):
        where = i % 4
        cfg = json.loads(json.dumps(ARM_CFG))
        if where == 0:
            cfg["observation"][0]["topic"] = t
        elif where == 1:
            cfg["topics"]["episode"] = t
        elif where == 2:
            cfg["record"]["extra_topics"] = ["/ok", t]
        else:
            cfg["command"]["topic"] = t or "/ x"
        p = tmp_path / f"t{i}.yaml"
        p.write_text(yaml.safe_dump(cfg))
        cases.append({"argv": ["eval", "--checkpoint", "random", "--config", str(p), "--episodes", "1"],
                      "names": [str(p)], "words": ["topic"]})
    for i, n in enumerate(big):
        p = tmp_path / f"s{i}.yaml"
        p.write_text(yaml.safe_dump(dict(ARM_CFG, seed=n)))
        cases.append({"argv": ["eval", "--checkpoint", "random", "--config", str(p), "--episodes", "1"],
                      "names": [str(p)], "words": ["seed", str(n)]})
        cases.append({"argv": train_argv("train-bc", ds, tmp_path / f"o{i}") + ["--seed", str(n)],
                      "names": ["--seed"], "words": [str(n)]})
    before = snapshot(tmp_path)
    results = run_batch(cases, tmp_path)
    for res in results:
        check_refusal(res, res["names"], res["words"], before, snapshot(tmp_path), "class 8")
    print(f"class 8: {len(results)} generated cases refused")


def test_class8_log_times_beyond_int64(tmp_path):
    from badbags import ACT_FIELDS, OBS_FIELDS, demo_bag, write_config  # noqa: F401

    from smiling_ros.io.bag import BagWriter, open_bag

    info = demo_bag(tmp_path / "src", "mcap", episodes=1, seconds=0.5)
    cfg = write_config(tmp_path / "cfg.yaml")
    stamps = collect(st.integers(2**63, 2**64 - 1), 8)
    cases = []
    for i, bad in enumerate(stamps):
        out = tmp_path / f"bag{i}"
        with open_bag(info["path"]) as r, BagWriter(out) as w:
            for k, (topic, msgtype, t, data) in enumerate(r.messages()):
                w.add_topic(topic, msgtype)
                w.write(topic, bad if k == 3 else t, data)
        cases.append({"argv": ["import-bag", str(out), "--config", str(cfg), "--out", str(tmp_path / f"o{i}")],
                      "names": [str(out)]})
    before = snapshot(tmp_path)
    results = run_batch(cases, tmp_path)
    for res in results:
        check_refusal(res, res["names"], ["time"], before, snapshot(tmp_path), "class 8 log time")


# =========================================================================== 9. integrity and leftovers
def test_class9_mcap_crc_catches_flipped_bytes(tmp_path):
    """Bags written by the project's writer (the recorder's) carry chunk CRCs: a byte flipped in any
    message's data is refused with one line."""
    from badbags import demo_bag, storage_file, write_config

    info = demo_bag(tmp_path / "src", "mcap", episodes=1, seconds=1.0)
    f = storage_file(info["path"])
    raw = f.read_bytes()
    chunk = 8  # records after the magic: opcode (1), length (8), body; the first chunk is opcode 0x06
    while raw[chunk] != 0x06:
        chunk += 9 + struct.unpack("<Q", raw[chunk + 1:chunk + 9])[0]
    (length,) = struct.unpack("<Q", raw[chunk + 1:chunk + 9])
    body_start = chunk + 9 + 40  # times, sizes, crc, empty compression string, records length
    cfg = write_config(tmp_path / "cfg.yaml")
    flips = collect(st.tuples(st.integers(body_start + 64, chunk + 9 + length - 1), st.integers(0, 7)), 30)
    cases = []
    for i, (pos, bit) in enumerate(flips):
        b = tmp_path / f"flip{i}"
        b.mkdir()
        data = bytearray(raw)
        data[pos] ^= 1 << bit
        (b / "x.mcap").write_bytes(bytes(data))
        cases.append({"argv": ["import-bag", str(b / "x.mcap"), "--config", str(cfg), "--out", str(tmp_path / "o")],
                      "names": [str(b / "x.mcap")]})
    before = snapshot(tmp_path)
    results = run_batch(cases, tmp_path)
    for res in results:
        check_refusal(res, res["names"], ["checksum|corrupt"], before, snapshot(tmp_path), "class 9 crc")


def _interrupt(argv, cwd, ready) -> subprocess.CompletedProcess:
    """Run the console script, SIGINT it once ``ready()`` holds, and wait for it."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen([sys.executable, "-c", "import sys; from smiling_ros.cli import main; sys.exit(main())"]
                         + argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not ready() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(argv, p.returncode, out, err)


def test_class9_sigint_leaves_logs_consistent_with_the_checkpoint(tmp_path):
    import csv

    ds = good_dataset(tmp_path / "ds", n_eps=3, steps=40)
    run = tmp_path / "bc"
    argv = ["train-bc", "--config", "arm_reach", "--dataset", str(ds), "--out", str(run), "--steps", "1000000",
            "--no-progress"]

    def rows():
        try:
            return len((run / "train.csv").read_text().splitlines()) >= 3
        except OSError:
            return False

    p = _interrupt(argv, tmp_path, rows)
    assert p.returncode == 130, p.stderr
    from smiling_ros.learn.checkpoint import load_checkpoint

    step = load_checkpoint(run / "policy.safetensors").meta["step"]
    logged = [int(r["step"]) for r in csv.DictReader(open(run / "train.csv"))]
    assert logged and max(logged) <= step
    assert json.loads((run / "summary.json").read_text())["interrupted"] is True

    # train-dbc writes its policy at the end: interrupted before, it leaves nothing (no log without a policy)
    from smiling_ros.learn.logger import log_path

    before = snapshot(tmp_path)
    out = tmp_path / "dbc.safetensors"
    p = _interrupt(["train-dbc", "--config", "arm_reach", "--dataset", str(ds), "--out", str(out),
                    "--steps", "1000000", "--dm-steps", "1000000", "--quiet"], tmp_path,
                   lambda: log_path(out).exists())
    assert p.returncode == 130, p.stderr
    assert snapshot(tmp_path) == before


def test_class9_datasets_have_the_mode_of_checkpoints(tmp_path):
    from badbags import demo_bag, write_config

    bag = demo_bag(tmp_path / "bag", "mcap", episodes=2, seconds=1.0)["path"]
    cfg = write_config(tmp_path / "cfg.yaml")
    ck = good_policy(tmp_path / "ck.safetensors")
    (res,) = run_batch([{"argv": ["import-bag", str(bag), "--config", str(cfg), "--out", str(tmp_path / "ds")]}],
                       tmp_path)
    assert res["rc"] == 0, res["err"]
    mode = os.stat(ck).st_mode & 0o777
    for f in ("meta.json", "data.safetensors"):
        assert os.stat(tmp_path / "ds" / f).st_mode & 0o777 == mode, f


def test_load_json_depth_does_not_recurse():
    from smiling_ros.errors import UserError
    from smiling_ros.io.inputs import parse_json, parse_yaml

    for depth in (65, 1000, 200_000):
        with pytest.raises(UserError, match="nested"):
            parse_json(nested(depth), "x.json")
    with pytest.raises(UserError):
        parse_yaml("a: " + "[" * 100_000, "x.yaml")
    assert parse_json(nested(10), "ok.json") is not None
    # strings holding brackets do not count as nesting
    assert parse_json(json.dumps({"s": "[" * 1000}), "s.json") == {"s": "[" * 1000}


def test_prepare_output_in_threads_one_winner(tmp_path):
    """Within one process too (separate open file descriptions), a second writer is refused."""
    from smiling_ros.errors import UserError
    from smiling_ros.io.outputs import prepare_output

    wins, refusals = [], []
    barrier = threading.Barrier(4)

    def grab():
        barrier.wait()
        try:
            o = prepare_output(tmp_path / "out", "dir")
        except UserError as exc:
            refusals.append(str(exc))
            return
        wins.append(o)

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(refusals) == 3 and all("pid" in r for r in refusals)
    wins[0].close()
