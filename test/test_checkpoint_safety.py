"""Checkpoints from untrusted places: pickles are refused without running them, tampered or
truncated safetensors are refused with one line, checkpoints for other dimensions are refused,
an interrupted save leaves the previous checkpoint readable, and the .json sidecar is never used
for loading."""
import json
import os
import pickle
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from smiling_ros.data.dataset import Normalizer
from smiling_ros.errors import UserError
from smiling_ros.learn.checkpoint import load_checkpoint, save_checkpoint
from smiling_ros.learn.policy import MlpActor, MlpPolicy, load_policy

OBS, ACT = 4, 2


def make_policy(tmp_path, name="pol", task="smiling_ros/ArmReach-v0", obs_dim=OBS) -> Path:
    torch.manual_seed(0)
    pol = MlpPolicy(MlpActor(obs_dim, ACT, [8, 8]), Normalizer(np.arange(obs_dim, dtype=np.float32),
                                                               np.ones(obs_dim, np.float32)),
                    -np.ones(ACT), np.ones(ACT), {"task": task})
    return pol.save(tmp_path / f"{name}.safetensors")


def one_line_error(fn, *args, **kw) -> str:
    with pytest.raises(UserError) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert "\n" not in msg and msg
    return msg


# --------------------------------------------------------------------------- pickles
class Payload:
    """Unpickling this object creates ``marker`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_pickle(path: Path, marker: Path, how: str) -> Path:
    obj = {"actor.mu.weight": torch.zeros(ACT, 8), "payload": Payload(marker)}
    if how == "torch_zip":
        torch.save(obj, path)
    elif how == "torch_legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:  # plain pickle, protocol 0 (text) or 5
        path.write_bytes(pickle.dumps(obj, protocol=int(how[-1])))
    return path


PICKLES = ["torch_zip", "torch_legacy", "pickle_p0", "pickle_p5"]


def test_payload_is_live(tmp_path):
    """The control: the payload really creates its file when unpickled (so the refusals below mean something)."""
    marker = tmp_path / "control_marker"
    f = write_pickle(tmp_path / "control.pt", marker, "torch_zip")
    torch.load(f, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["evil.pt", "evil.safetensors", "evil"])
@pytest.mark.parametrize("how", PICKLES)
def test_pickle_checkpoint_is_refused_without_running_it(tmp_path, how, name):
    marker = tmp_path / "PWNED"
    f = write_pickle(tmp_path / name, marker, how)
    for load in (load_checkpoint, load_policy):
        msg = one_line_error(load, f)
        assert str(f) in msg
        assert ("pickle" in msg) or ("not a safetensors checkpoint" in msg), msg
    assert not marker.exists()


def test_pickle_refused_through_the_real_cli(tmp_path):
    marker = tmp_path / "PWNED"
    f = write_pickle(tmp_path / "policy.pt", marker, "torch_zip")
    exe = shutil.which("smiling-ros", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-m", "smiling_ros.cli"]
    res = subprocess.run(cmd + ["eval", "--checkpoint", str(f), "--episodes", "1"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.stderr + res.stdout
    assert lines[0].startswith("smiling-ros eval: error: ") and "pickle" in lines[0] and str(f) in lines[0]
    assert not marker.exists()


# --------------------------------------------------------------------------- tampered safetensors
def split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def join(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def edit_meta(header: dict, **changes) -> dict:
    meta = json.loads(header["__metadata__"]["smiling_ros"])
    meta.update(changes)
    header["__metadata__"]["smiling_ros"] = json.dumps(meta)
    return header


def t_header_length_huge(p):
    raw = p.read_bytes()
    p.write_bytes(struct.pack("<Q", 2**40) + raw[8:])


def t_header_length_off(p):
    raw = p.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    p.write_bytes(struct.pack("<Q", n + 16) + raw[8:])


def t_offsets_wrong(p):
    h, data = split(p)
    h["actor.mu.weight"]["data_offsets"][1] += 8
    p.write_bytes(join(h, data))


def t_offsets_swapped(p):  # two same-size tensors exchanged: a valid file with the wrong weights
    h, data = split(p)
    h["actor.latent.0.bias"]["data_offsets"], h["actor.latent.2.bias"]["data_offsets"] = \
        h["actor.latent.2.bias"]["data_offsets"], h["actor.latent.0.bias"]["data_offsets"]
    p.write_bytes(join(h, data))


def t_truncated(p):
    p.write_bytes(p.read_bytes()[:-20])


def t_junk_appended(p):
    p.write_bytes(p.read_bytes() + b"\0" * 64)


def t_bytes_flipped(p):  # finite values changed in place: only the checksum notices
    h, data = split(p)
    a = bytearray(data)
    a[4:8] = struct.pack("<f", 0.123)
    p.write_bytes(join(h, bytes(a)))


def t_meta_json_corrupt(p):
    h, data = split(p)
    h["__metadata__"]["smiling_ros"] = h["__metadata__"]["smiling_ros"][:-7]
    p.write_bytes(join(h, data))


def t_meta_not_object(p):
    h, data = split(p)
    h["__metadata__"]["smiling_ros"] = "[1, 2, 3]"
    p.write_bytes(join(h, data))


def t_meta_missing(p):
    h, data = split(p)
    del h["__metadata__"]
    p.write_bytes(join(h, data))


def t_meta_format(p):
    p.write_bytes(join(edit_meta(split(p)[0], format="other/9"), split(p)[1]))


def t_integrity_corrupt(p):
    h, data = split(p)
    h["__metadata__"]["smiling_ros.integrity"] = "{not json"
    p.write_bytes(join(h, data))


def _resave(p, fn):
    with safe_open(str(p), "pt") as f:
        md, ts = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    ts = fn(ts)
    p.unlink()
    save_file(ts, str(p), metadata=md)


def t_extra_tensor(p):
    _resave(p, lambda ts: {**ts, "evil.blob": torch.zeros(3)})


def t_missing_tensor(p):
    _resave(p, lambda ts: {k: v for k, v in ts.items() if k != "actor.mu.bias"})


def t_dtype_changed(p):
    _resave(p, lambda ts: {**ts, "actor.mu.weight": ts["actor.mu.weight"].double()})


def t_shape_changed(p):
    _resave(p, lambda ts: {**ts, "actor.mu.weight": ts["actor.mu.weight"].T.contiguous()})


def t_nan_resaved(p):
    _resave(p, lambda ts: {**ts, "actor.mu.bias": torch.full_like(ts["actor.mu.bias"], float("nan"))})


TAMPER = {
    "header_length_huge": (t_header_length_huge, "not a readable safetensors"),
    "header_length_off": (t_header_length_off, "not a readable safetensors"),
    "header_offsets_wrong": (t_offsets_wrong, "not a readable safetensors"),
    "header_offsets_swapped": (t_offsets_swapped, "checksum"),
    "tensor_bytes_truncated": (t_truncated, "not a readable safetensors"),
    "junk_appended": (t_junk_appended, "not a readable safetensors"),
    "tensor_bytes_changed": (t_bytes_flipped, "checksum"),
    "metadata_json_corrupt": (t_meta_json_corrupt, "corrupt checkpoint metadata"),
    "metadata_not_an_object": (t_meta_not_object, "unsupported checkpoint format"),
    "metadata_missing": (t_meta_missing, "without smiling_ros metadata"),
    "metadata_other_format": (t_meta_format, "unsupported checkpoint format"),
    "integrity_record_corrupt": (t_integrity_corrupt, "integrity record"),
    "extra_tensor": (t_extra_tensor, "unexpected tensor 'evil.blob'"),
    "missing_tensor": (t_missing_tensor, "'actor.mu.bias' is missing"),
    "dtype_changed": (t_dtype_changed, "float64[2, 8] but was written as float32[2, 8]"),
    "shape_changed": (t_shape_changed, "float32[8, 2] but was written as float32[2, 8]"),
    "nan_weights_resaved": (t_nan_resaved, "checksum"),
}


@pytest.mark.parametrize("case", sorted(TAMPER))
def test_tampered_safetensors_is_refused_with_one_line(tmp_path, case):
    path = make_policy(tmp_path)
    load_policy(path, device="cpu")  # intact: loads
    tamper, words = TAMPER[case]
    tamper(path)
    for load in (load_checkpoint, load_policy):
        msg = one_line_error(load, path)
        assert msg.startswith(str(path)) and words in msg, msg


def test_nan_weights_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "nan", {"w": torch.tensor([1.0, float("nan")]), "b": torch.zeros(2)},
                           {"kind": "mlp_policy"})
    assert "tensor 'w' contains NaN or inf" in one_line_error(load_checkpoint, path)
    path = save_checkpoint(tmp_path / "inf", {"w": torch.tensor([1.0, float("-inf")])}, {"kind": "x"})
    assert "NaN or inf" in one_line_error(load_checkpoint, path)


def strip_integrity(p: Path) -> None:
    h, data = split(p)
    del h["__metadata__"]["smiling_ros.integrity"]
    p.write_bytes(join(h, data))


META_EDITS = {
    "obs_dim_edited": ({"obs_dim": 5}, "obs_dim is 5 but this robot/task has 4"),
    "hidden_not_numbers": ({"hidden": "abc"}, "inconsistent mlp_policy"),
    "obs_norm_null": ({"obs_norm": None}, "inconsistent mlp_policy"),
    "obs_norm_zero_std": ({"obs_norm": {"mean": [0.0] * OBS, "std": [0.0] * OBS}}, "std > 0"),
    "obs_norm_wrong_size": ({"obs_norm": {"mean": [0.0] * 3, "std": [1.0] * 3}}, "obs_norm has 3 elements"),
    "bounds_nan": ({"action_low": [float("nan")] * ACT}, "finite"),
    "bounds_inverted": ({"action_low": [1.0] * ACT, "action_high": [-1.0] * ACT}, "action_low > action_high"),
    "activation_unknown": ({"activation": "gelu"}, "unknown activation 'gelu'"),
    "huge_obs_dim": ({"obs_dim": 10**12}, "obs_dim is 1000000000000 but"),
    "obs_dim_edited_no_dims_asked": ({"obs_dim": 5}, "metadata says obs_dim 5, act_dim 2 but the weights"),
    "kind_bridger": ({"kind": "bridger"}, "inconsistent bridger checkpoint"),
    "kind_unknown": ({"kind": "rootkit"}, "is a 'rootkit' checkpoint"),
    "kind_not_string": ({"kind": ["mlp_policy"]}, "'kind' is not a string"),
    "obs_dim_not_a_number": ({"obs_dim": "abc"}, "obs_dim is 'abc', not an integer"),
}


@pytest.mark.parametrize("case", sorted(META_EDITS))
def test_edited_metadata_is_refused_even_without_integrity_record(tmp_path, case):
    """Files without the integrity record (older, or stripped) are refused by default; loaded with
    require_integrity=False they still get checked by the loader."""
    path = make_policy(tmp_path)
    strip_integrity(path)
    assert "without an integrity record" in one_line_error(load_policy, path, device="cpu")
    load_policy(path, device="cpu", require_integrity=False)  # still loads untouched
    changes, words = META_EDITS[case]
    h, data = split(path)
    path.write_bytes(join(edit_meta(h, **changes), data))
    dims = {} if case.endswith("_no_dims_asked") else {"obs_dim": OBS, "act_dim": ACT}
    msg = one_line_error(load_policy, path, device="cpu", require_integrity=False, **dims)
    assert str(path) in msg and words in msg, msg


@pytest.mark.parametrize("tamper", [t_extra_tensor, t_missing_tensor, t_shape_changed])
def test_tensor_set_checked_by_the_loader_without_integrity_record(tmp_path, tamper):
    path = make_policy(tmp_path)
    strip_integrity(path)
    tamper(path)
    msg = one_line_error(load_policy, path, device="cpu", require_integrity=False)
    assert "inconsistent mlp_policy checkpoint" in msg


def test_not_checkpoints(tmp_path):
    (tmp_path / "empty.safetensors").write_bytes(b"")
    assert "empty file" in one_line_error(load_checkpoint, tmp_path / "empty.safetensors")
    (tmp_path / "text.safetensors").write_text("hello world, not a checkpoint")
    assert "not a safetensors checkpoint" in one_line_error(load_checkpoint, tmp_path / "text.safetensors")
    assert "checkpoint not found" in one_line_error(load_checkpoint, tmp_path / "nope.safetensors")
    (tmp_path / "d").mkdir()
    assert "holds no .safetensors" in one_line_error(load_checkpoint, tmp_path / "d")
    make_policy(tmp_path / "d", "a")
    make_policy(tmp_path / "d", "b")
    assert "several checkpoints" in one_line_error(load_checkpoint, tmp_path / "d")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))  # someone else's safetensors
    assert "not a smiling_ros checkpoint" in one_line_error(load_checkpoint, tmp_path / "plain.safetensors")


# --------------------------------------------------------------------------- dimensions
def test_checkpoint_for_other_dimensions_is_refused(tmp_path):
    path = make_policy(tmp_path)
    ck = load_checkpoint(path)
    assert ck.require("mlp_policy", obs_dim=OBS, act_dim=ACT, task="smiling_ros/ArmReach-v0") is ck
    msg = one_line_error(ck.require, "mlp_policy", obs_dim=8)
    assert "obs_dim is 4 but this robot/task has 8" in msg and str(path) in msg
    assert "act_dim is 2 but this robot/task has 6" in one_line_error(ck.require, "mlp_policy", act_dim=6)
    assert "trained for task 'smiling_ros/ArmReach-v0', not 'Hopper-v5'" in one_line_error(
        ck.require, "mlp_policy", task="Hopper-v5")
    assert "is a 'mlp_policy' checkpoint, expected bridger" in one_line_error(ck.require, "bridger")
    msg = one_line_error(load_policy, path, device="cpu", obs_dim=11, act_dim=ACT)
    assert "obs_dim is 4 but this robot/task has 11" in msg
    assert "act_dim is 2 but this robot/task has 3" in one_line_error(load_policy, path, device="cpu", act_dim=3)
    pol = load_policy(path, device="cpu", obs_dim=OBS, act_dim=ACT)
    assert pol.act(np.zeros(OBS, np.float32)).shape == (ACT,)


def test_other_dimensions_through_eval(tmp_path, capsys):
    """A policy for 4 observations, evaluated on the arm task (8): refused before any episode runs."""
    from smiling_ros.cli import main

    path = make_policy(tmp_path)
    assert main(["eval", "--checkpoint", str(path), "--config", "arm_reach", "--episodes", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "obs_dim is 4 but this robot/task has 8" in err[0]


# --------------------------------------------------------------------------- sidecar
def test_sidecar_json_is_never_trusted(tmp_path):
    path = make_policy(tmp_path)
    side = path.with_suffix(".json")
    assert json.loads(side.read_text())["kind"] == "mlp_policy"
    want = load_policy(path, device="cpu").act(np.ones(OBS, np.float32))
    side.write_text(json.dumps({"format": "smiling_ros.checkpoint/1", "kind": "bridger", "obs_dim": 99,
                                "hidden": [1], "obs_norm": {"mean": [1e9] * 99, "std": [1e-9] * 99}}))
    for spec in (path, side, tmp_path / "pol"):  # the file, its sidecar's name, the name without suffix
        ck = load_checkpoint(spec)
        assert ck.path == path and ck.kind == "mlp_policy" and ck.meta["obs_dim"] == OBS
        pol = load_policy(spec, device="cpu")
        assert np.array_equal(pol.act(np.ones(OBS, np.float32)), want)
    side.unlink()
    assert load_checkpoint(path).meta["obs_dim"] == OBS
    # A sidecar alone is no checkpoint.
    path.rename(tmp_path / "moved.safetensors")
    (tmp_path / "pol.json").write_text(json.dumps({"kind": "mlp_policy"}))
    assert "not a safetensors checkpoint" in one_line_error(load_checkpoint, tmp_path / "pol.json")


# --------------------------------------------------------------------------- interrupted writes
def test_exception_inside_save_keeps_previous(tmp_path, monkeypatch):
    import safetensors.torch

    path = save_checkpoint(tmp_path / "ck.safetensors", {"w": torch.ones(1000)}, {"kind": "test", "k": 1})

    def dies_halfway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x50" * 100)  # a partial file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", dies_halfway)
    with pytest.raises(UserError, match="ck.safetensors: cannot write .no space left on device."):
        save_checkpoint(path, {"w": torch.full((1000,), 2.0)}, {"kind": "test", "k": 2})
    ck = load_checkpoint(path)
    assert ck.meta["k"] == 1 and torch.equal(ck.tensors["w"], torch.ones(1000))
    assert json.loads(path.with_suffix(".json").read_text())["k"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.json", "ck.safetensors"]  # no temp file left


def test_sigkill_during_save_leaves_a_readable_checkpoint(tmp_path):
    """A child process saves versions 1, 2 and 3 of a checkpoint and is SIGKILLed inside its third
    save, at each of the save's steps in turn (the tensor file written to a temporary, fsynced,
    renamed; then the sidecar the same way), and once after it. The child stops itself at the step
    and tells the parent, so every kill lands where it is meant to, whatever the machine's load.
    After every kill the checkpoint loads, its tensors match its own metadata, the sidecar is the
    same version or one older, and only a kill before a rename leaves a temporary file."""
    n = 2_000_000  # 8 MB
    path = save_checkpoint(tmp_path / "ck.safetensors", {"w": torch.zeros(n)}, {"kind": "test", "k": 0})
    # fsync(tensor tmp), replace(tensor tmp), fsync(sidecar tmp), replace(sidecar tmp), after the save
    expected = [(2, 2, True), (2, 2, True), (3, 2, True), (3, 2, True), (3, 3, False)]
    for point, (want_k, want_side, want_temp) in enumerate(expected):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: three saves; stop at step `point` of the third and wait to be killed
            try:
                os.close(r)
                armed, calls = [False], [0]

                def stop_at(real):
                    def step(*args, **kwargs):
                        if armed[0]:
                            if calls[0] == point:
                                os.write(w, b"x")
                                time.sleep(3600)
                            calls[0] += 1
                        return real(*args, **kwargs)
                    return step

                os.fsync, os.replace = stop_at(os.fsync), stop_at(os.replace)
                for k in (1, 2, 3):
                    armed[0] = k == 3
                    save_checkpoint(path, {"w": torch.full((n,), float(k))}, {"kind": "test", "k": k})
                os.write(w, b"x")
                time.sleep(3600)
            finally:
                os._exit(0)
        os.close(w)
        try:
            assert os.read(r, 1) == b"x", f"the child ended before step {point} of its save"
        finally:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(r)
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".ck.")]
        assert bool(temps) == want_temp, (point, temps)
        for p in temps:
            p.unlink()
        ck = load_checkpoint(path)
        assert ck.meta["k"] == want_k, point
        assert torch.equal(ck.tensors["w"], torch.full((n,), float(want_k)))
        assert json.loads(path.with_suffix(".json").read_text())["k"] == want_side, point
