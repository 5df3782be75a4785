"""Checkpoints between machines.

Without ROS: the transfer format refuses tampered, truncated and oversized payloads before
anything is stored or loaded. Over real DDS: a trainer process in its own working directory
announces a checkpoint with its bytes and deletes the file at once; the controller (another
process, another working directory) still verifies, stores and swaps to it; a tampered transfer
is refused and the running policy kept.
"""
from __future__ import annotations

import array
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ros_available
from smiling_ros.errors import UserError
from smiling_ros.learn import transfer


@pytest.fixture
def ckpt(tmp_path):
    from smiling_ros.data.dataset import Normalizer
    from smiling_ros.learn.policy import MlpActor, MlpPolicy

    return MlpPolicy(MlpActor(3, 2, [8]), Normalizer.identity(3), -np.ones(2), np.ones(2)).save(tmp_path / "p.safetensors")


def test_round_trip_stores_a_verified_copy(ckpt, tmp_path):
    from smiling_ros.learn.policy import load_policy

    header, data = transfer.read_checkpoint(ckpt)
    h2, payload = transfer.decode(transfer.encode(header, data), max_bytes=10_000_000)
    assert h2 == header and bytes(payload) == data
    stored = transfer.store(h2, payload, tmp_path / "cache")
    assert stored.name.startswith(header.sha256[:16]) and stored.read_bytes() == data
    assert load_policy(str(stored), device="cpu").act_dim == 2


def test_tampered_truncated_oversized_and_garbage_are_refused(ckpt):
    header, data = transfer.read_checkpoint(ckpt)
    wire = bytearray(transfer.encode(header, data))
    tampered = bytearray(wire)
    tampered[-100] ^= 0x01  # one bit of one weight
    with pytest.raises(UserError, match="does not match its sha256"):
        transfer.decode(tampered, 10_000_000)
    with pytest.raises(UserError, match="truncated or tampered"):
        transfer.decode(wire[:-10], 10_000_000)
    with pytest.raises(UserError, match="over the"):
        transfer.decode(wire, max_bytes=len(data) - 1)
    with pytest.raises(UserError, match="bad magic"):
        transfer.decode(b"PK\x03\x04" + bytes(wire[4:]), 10_000_000)
    with pytest.raises(UserError, match="over the 0.0 MB limit"):
        transfer.read_checkpoint(ckpt, max_bytes=10)


def test_announced_file_must_match_its_hash(ckpt):
    header, _ = transfer.read_checkpoint(ckpt)
    ann = transfer.parse_announcement(transfer.announcement(ckpt, header))
    transfer.verify_file(ann["path"], ann["sha256"], 10_000_000)
    with open(ckpt, "ab") as f:
        f.write(b"\0")
    with pytest.raises(UserError, match="does not match the announced sha256"):
        transfer.verify_file(ann["path"], ann["sha256"], 10_000_000)
    assert transfer.parse_announcement(" /a/b.safetensors\n") == {"path": "/a/b.safetensors", "sha256": None,
                                                                  "name": None, "transfer": False}
    assert transfer.parse_announcement(transfer.announcement(ckpt, header, transfer=True))["transfer"] is True


# --------------------------------------------------------------------------- two machines over DDS
@pytest.mark.skipif(not ros_available(), reason="rclpy wheels / ROS 2 not installed")
@pytest.mark.ros
@pytest.mark.slow
def test_controller_swaps_to_a_transferred_checkpoint_and_refuses_a_tampered_one(tmp_path):
    from test_controller_node import B_OUTPUT, Harness, make_policies, write_config

    from smiling_ros.ros.dds_env import child_env
    from smiling_ros.ros.transfer import BLOB

    trainer_dir, robot_dir = tmp_path / "trainer", tmp_path / "robot"
    trainer_dir.mkdir()
    robot_dir.mkdir()
    pols = make_policies(trainer_dir)  # the trainer's files
    robot_pols = make_policies(robot_dir)  # the robot's own copy of the policy it starts with
    cfg = write_config(robot_dir)
    harness = Harness()
    log = robot_dir / "controller.log"
    env = child_env()
    cmd = [sys.executable, "-m", "smiling_ros.nodes.controller_node", "--ros-args", "-p", f"config:={cfg}",
           "-p", f"checkpoint:={robot_pols['a']}", "-p", f"checkpoint_cache:={robot_dir / 'cache'}"]
    ctl = subprocess.Popen(cmd, env=env, cwd=robot_dir, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        harness.obs = np.array([0.3, -0.2, 0.1])
        harness.wait_for(lambda: len(harness.since(0)) >= 5, 90, "first commands from controller_node")
        assert not any(np.allclose(a, B_OUTPUT, atol=1e-6) for _, a in harness.since(0))
        # The trainer announces B with its bytes and deletes its file right after.
        trainer = subprocess.Popen(
            [sys.executable, "-c", "import sys; from smiling_ros.cli import main; sys.exit(main())", "announce",
             "b.safetensors", "--wait", "90"],
            env=env, cwd=trainer_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = trainer.stdout.readline()
        for f in ("b.safetensors", "b.json"):
            (trainer_dir / f).unlink()
        assert line.startswith("announced b.safetensors"), line + trainer.stdout.read()
        t0 = time.monotonic()
        harness.wait_for(lambda: [a for _, a in harness.since(t0) if np.allclose(a, B_OUTPUT, atol=1e-6)], 90,
                         "policy B's actions after the transfer")
        assert trainer.wait(120) == 0
        stored = list((robot_dir / "cache").glob("*-b.safetensors"))
        assert len(stored) == 1
        text = log.read_text()
        assert "sent with its bytes; waiting for its transfer" in text and "swapped" in text
        # A tampered transfer (policy A's bytes with one bit flipped, header unchanged) is refused.
        from std_msgs.msg import UInt8MultiArray

        header, data = transfer.read_checkpoint(pols["a"])
        wire = bytearray(transfer.encode(header, data))
        wire[-64] ^= 0x01
        pub = harness.node.create_publisher(UInt8MultiArray, "/smiling_ros/policy/checkpoint", BLOB)
        pub.publish(UInt8MultiArray(data=array.array("B", wire)))
        harness.wait_for(lambda: "does not match its sha256" in log.read_text(), 60, "the refusal in the log")
        refusal = [ln for ln in log.read_text().splitlines() if "hot swap refused" in ln][-1]
        assert "tampered" in refusal and "keeping" in refusal and "-b.safetensors" in refusal
        t1 = time.monotonic()
        harness.wait_for(lambda: len(harness.since(t1)) >= 5, 30, "commands after the refusal")
        assert all(np.allclose(a, B_OUTPUT, atol=1e-6) for _, a in harness.since(t1))
        assert not list((robot_dir / "cache").glob("*-a.safetensors"))  # nothing of it was stored
    finally:
        ctl.send_signal(signal.SIGINT)
        try:
            ctl.wait(10)
        except subprocess.TimeoutExpired:
            ctl.kill()
        harness.close()
