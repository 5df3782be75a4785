"""QoS profiles, chosen deliberately.

- SENSOR: inputs from the robot (joint states, observations): best effort, keep last 5, the
  profile robot drivers publish with (rclpy's qos_profile_sensor_data). A reliable subscriber
  would not match a best-effort publisher; a best-effort subscriber matches both.
- STATE: what the simulated robot (sim_node) publishes joint states and observations with:
  reliable, volatile, keep last 10 (what ros2_control's joint_state_broadcaster offers). A
  reliable publisher matches both best-effort (SENSOR) and reliable (RECORD, ``ros2 bag record``)
  subscribers; keep-last means a slow subscriber never blocks the robot.
- COMMAND: to ros2_control's forward command controller: reliable, keep last 1 (only the
  newest command matters; an old one must never be replayed late).
- EVENTS: episode markers and policy announcements: reliable, transient local, keep last 10,
  so a late joiner (recorder, controller) still gets the latest.
- RECORD: what the recorder subscribes with: reliable, keep last 1000 (no loss under bursts;
  matches reliable and best-effort publishers alike for reliable ones, best-effort ones need
  SENSOR, chosen per topic by the recorder from the publisher's offered QoS).
"""
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

SENSOR = qos_profile_sensor_data
STATE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
COMMAND = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
EVENTS = QoSProfile(
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
    history=HistoryPolicy.KEEP_LAST,
)
RECORD = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
