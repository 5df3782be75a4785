"""A lab's 6-joint arm, written without any of smiling_ros's code: rclpy, messages and numpy only.

    python lab_arm.py OUT.json PHASES_JSON [--rate 500] [--target-rate 10]

- /joint_states (sensor_msgs/JointState, header stamped with this node's clock) at --rate Hz, the
  UR5e joint names in another order than a config would list them, plus a gripper joint.
- /target_pose (geometry_msgs/PoseStamped) at --target-rate Hz.
- /forward_velocity_controller/commands (std_msgs/Float64MultiArray, 6 joint velocities in the
  order of COMMAND_JOINTS): integrated by a first-order joint model (time constant TAU).

PHASES_JSON is a list of [name, seconds]; the phases run one after the other once the first
command has arrived. Names: ``ok``; ``stale_js`` (no joint states); ``stale_target`` (no target
pose); ``nan`` (elbow position NaN); ``drop_joint`` (elbow_joint left out of the message);
``freeze`` (the joint-state message of the phase's start republished, same stamp and values).
At the end OUT.json holds every command received and, per phase, its start, the time the last
good sample went out before it and the first good sample after it (all time.monotonic()).
"""
import json
import math
import sys
import threading
import time

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray

COMMAND_JOINTS = ["shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint",
                  "wrist_3_joint"]
PUBLISHED = ["wrist_3_joint", "finger_joint", "elbow_joint", "shoulder_pan_joint", "wrist_1_joint",
             "shoulder_lift_joint", "wrist_2_joint"]  # another order, and a gripper joint
TAU = 0.05  # s: joint velocity follows the command with this time constant


def main() -> int:
    out_path, phases = sys.argv[1], json.loads(sys.argv[2])
    rate = float(sys.argv[sys.argv.index("--rate") + 1]) if "--rate" in sys.argv else 500.0
    target_rate = float(sys.argv[sys.argv.index("--target-rate") + 1]) if "--target-rate" in sys.argv else 10.0
    rclpy.init()
    node = rclpy.create_node("lab_arm")
    js_pub = node.create_publisher(JointState, "/joint_states", 10)
    target_pub = node.create_publisher(PoseStamped, "/target_pose", 10)
    lock = threading.Lock()
    q = np.zeros(7)
    qd = np.zeros(7)
    cmd = np.zeros(6)
    commands = []  # (monotonic time, values)
    idx = [PUBLISHED.index(j) for j in COMMAND_JOINTS]

    def on_command(msg):
        with lock:
            values = list(msg.data)
            commands.append((time.monotonic(), values))
            if len(values) == 6 and all(math.isfinite(v) for v in values):
                cmd[:] = values

    reliable = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Float64MultiArray, "/forward_velocity_controller/commands", on_command, reliable)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    flags = {"running": True}

    def spin():
        while flags["running"]:
            executor.spin_once(timeout_sec=0.01)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()

    state = {"phase": "wait", "frozen": None}
    records = []  # per phase: name, start, last_good (before), first_good (after)
    last_good = {"js": None, "target": None}

    def publish_js(now):
        phase = state["phase"]
        if phase == "stale_js":
            return
        if phase == "freeze" and state["frozen"] is not None:
            js_pub.publish(state["frozen"])
            return
        msg = JointState()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = "base_link"
        names, pos, vel = list(PUBLISHED), q.tolist(), qd.tolist()
        if phase == "nan":
            pos[PUBLISHED.index("elbow_joint")] = float("nan")
        if phase == "drop_joint":
            k = PUBLISHED.index("elbow_joint")
            del names[k], pos[k], vel[k]
        msg.name, msg.position, msg.velocity = names, pos, vel
        js_pub.publish(msg)
        if phase == "freeze":
            state["frozen"] = msg
        if phase not in ("nan", "drop_joint", "freeze"):
            last_good["js"] = now

    def publish_target(now):
        if state["phase"] == "stale_target":
            return
        msg = PoseStamped()
        msg.header.stamp = node.get_clock().now().to_msg()
        msg.header.frame_id = "base_link"
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = 0.4, 0.1 * math.sin(now), 0.3
        msg.pose.orientation.w = 1.0
        target_pub.publish(msg)
        last_good["target"] = now
        if records and state["phase"] == "ok" and "first_good_target" not in records[-1]:
            records[-1]["first_good_target"] = now

    period, target_period = 1.0 / rate, 1.0 / target_rate
    t0 = time.monotonic()
    next_js, next_target, last = t0, t0, t0
    plan, phase_end = list(phases), None
    deadline = t0 + 120.0
    while True:
        now = time.monotonic()
        with lock:  # the joint model
            dt = now - last
            qd[idx] += (cmd - qd[idx]) * min(1.0, dt / TAU)
            q[:] += qd * dt
            started = bool(commands)
        last = now
        if state["phase"] == "wait" and started or phase_end is not None and now >= phase_end:
            if records:
                records[-1]["end"] = now
            if not plan:
                break
            name, seconds = plan.pop(0)
            prev = state["phase"]
            state["phase"], state["frozen"] = name, None
            records.append({"phase": name, "start": now, "last_good_js": last_good["js"],
                            "last_good_target": last_good["target"], "previous": prev})
            phase_end = now + float(seconds)
        if now >= deadline:
            break
        if now >= next_js:
            publish_js(now)
            if records and state["phase"] == "ok" and "first_good" not in records[-1]:
                records[-1]["first_good"] = now
            next_js += period
            if next_js < now - 10 * period:
                next_js = now  # fell far behind (loaded machine): do not burst
        if now >= next_target:
            publish_target(now)
            next_target += target_period
        time.sleep(max(0.0, min(next_js, next_target) - time.monotonic()))
    time.sleep(0.3)  # commands still in flight
    flags["running"] = False
    spinner.join(2)
    with lock:
        doc = {"commands": commands, "phases": records, "rate": rate, "target_rate": target_rate}
    with open(out_path, "w") as f:
        json.dump(doc, f)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
