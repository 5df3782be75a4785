"""Message <-> vector field mapping (smiling_ros/adapters/fields.py) on rosbags messages, rclpy
messages and plain attribute objects."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
from badbags import JOINTS, T, float_array, joint_state, pose_stamped, yaw_quat
from transforms3d.euler import euler2quat, quat2euler

from smiling_ros.io.fields import (
    VectorAssembler,
    element_names,
    extract,
    msgtype_of,
    normalize_msgtype,
    quat_to_euler,
)
from smiling_ros.config import FieldSpec, build
from smiling_ros.errors import UserError

JS = "sensor_msgs/msg/JointState"
PS = "geometry_msgs/msg/PoseStamped"
FA = "std_msgs/msg/Float64MultiArray"


def spec(**kw) -> FieldSpec:
    return build(FieldSpec, kw, "test")


def test_multiarray_data_indices_and_size():
    msg = float_array([1.0, 2.0, 3.0, 4.0])
    assert extract(spec(topic="/o"), msg, FA).tolist() == [1, 2, 3, 4]
    assert extract(spec(topic="/o", indices=[3, 0]), msg, FA).tolist() == [4, 1]
    assert extract(spec(topic="/o", indices=[-1]), msg, FA).tolist() == [4]
    out = extract(spec(topic="/o"), float_array([0.5, 1.5], "std_msgs/msg/Float32MultiArray"), "")
    assert out.dtype == np.float64 and out.tolist() == [0.5, 1.5]
    with pytest.raises(UserError, match=r"topic '/o' field 'data': 4 values, config says size 3"):
        extract(spec(topic="/o", size=3), msg, FA)
    with pytest.raises(UserError, match="index 4 out of range for 4 values"):
        extract(spec(topic="/o", indices=[4]), msg, FA)


def test_joint_state_by_name_in_config_order():
    msg = joint_state(0, JOINTS, [1.0, 2.0, 3.0], [10.0, 20.0, 30.0], [0.1, 0.2, 0.3])
    assert extract(spec(topic="/js", field="position", joints=["wrist", "elbow"]), msg, JS).tolist() == [3, 1]
    assert extract(spec(topic="/js", field="velocity", joints=["shoulder"]), msg, JS).tolist() == [20]
    assert extract(spec(topic="/js", field="effort"), msg, JS).tolist() == [0.1, 0.2, 0.3]
    with pytest.raises(UserError, match=r"topic '/js': joint 'gripper' not in JointState \(joints: elbow, shoulder, wrist\)"):
        extract(spec(topic="/js", field="position", joints=["elbow", "gripper"]), msg, JS)
    no_vel = joint_state(0, JOINTS, [1.0, 2.0, 3.0])
    with pytest.raises(UserError, match="joint 'elbow' has no value"):
        extract(spec(topic="/js", field="velocity", joints=["elbow"]), no_vel, JS)
    with pytest.raises(UserError, match="0 values for 3 joints"):
        extract(spec(topic="/js", field="velocity"), no_vel, JS)


def test_pose_position_orientation_quat_and_euler():
    q = euler2quat(0.1, -0.2, 0.3, "sxyz")
    msg = pose_stamped(0, [1.0, 2.0, 3.0], q)
    assert extract(spec(topic="/p", field="pose.position"), msg, PS).tolist() == [1, 2, 3]
    np.testing.assert_allclose(extract(spec(topic="/p", field="pose.orientation"), msg, PS), q)
    np.testing.assert_allclose(
        extract(spec(topic="/p", field="pose.orientation", orientation="euler"), msg, PS), [0.1, -0.2, 0.3], atol=1e-12
    )
    full = extract(spec(topic="/p", field="pose"), msg, PS)
    np.testing.assert_allclose(full, [1, 2, 3, *q])
    assert len(extract(spec(topic="/p", field="pose", orientation="euler"), msg, PS)) == 6
    assert extract(spec(topic="/p", field="pose.position.y"), msg, PS).tolist() == [2]


def test_twist_vector3_float64_and_generic_nested():
    v3 = T["geometry_msgs/msg/Vector3"]
    tw = T["geometry_msgs/msg/TwistStamped"](
        header=T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](sec=0, nanosec=0), frame_id=""),
        twist=T["geometry_msgs/msg/Twist"](linear=v3(x=1.0, y=2.0, z=3.0), angular=v3(x=4.0, y=5.0, z=6.0)),
    )
    assert extract(spec(topic="/t", field="twist"), tw, "").tolist() == [1, 2, 3, 4, 5, 6]
    assert extract(spec(topic="/t", field="twist.angular"), tw, "").tolist() == [4, 5, 6]
    assert extract(spec(topic="/v", field="x"), v3(x=7.0, y=0.0, z=0.0), "geometry_msgs/Vector3").tolist() == [7]
    f = T["std_msgs/msg/Float64"](data=2.5)
    assert extract(spec(topic="/f"), f, "").tolist() == [2.5]
    i = T["std_msgs/msg/Int32"](data=-4)
    assert extract(spec(topic="/i"), i, "").tolist() == [-4.0]
    # a nested message with no fixed layout: numeric fields in order, header and strings skipped
    wrench = T["geometry_msgs/msg/WrenchStamped"](
        header=tw.header, wrench=T["geometry_msgs/msg/Wrench"](force=v3(x=1.0, y=0.0, z=0.0), torque=v3(x=0.0, y=0.0, z=2.0))
    )
    assert extract(spec(topic="/w", field="wrench"), wrench, "").tolist() == [1, 0, 0, 0, 0, 2]


def test_wrong_type_field_and_non_numeric():
    msg = joint_state(0, JOINTS, [1.0, 2.0, 3.0])
    with pytest.raises(UserError, match=r"topic '/js': message type is sensor_msgs/msg/JointState, config expects std_msgs/msg/Float64MultiArray"):
        extract(spec(topic="/js", type="std_msgs/Float64MultiArray"), msg, JS)
    with pytest.raises(UserError, match=r"topic '/js' field 'positions': sensor_msgs/msg/JointState has no field 'positions' \(fields of sensor_msgs/msg/JointState: header, name, position, velocity, effort\)"):
        extract(spec(topic="/js", field="positions"), msg, JS)
    with pytest.raises(UserError, match="field 'name': not numeric"):
        extract(spec(topic="/js", field="name"), msg, JS)
    with pytest.raises(UserError, match="'joints' applies to JointState"):
        extract(spec(topic="/o", joints=["a"]), float_array([1.0]), FA)
    with pytest.raises(UserError, match="field '__msgtype__'"):
        extract(spec(topic="/o", field="__msgtype__"), float_array([1.0]), FA)


def test_plain_attribute_objects_and_type_names():
    q = SimpleNamespace(x=0.0, y=0.0, z=math.sin(0.25), w=math.cos(0.25))
    obj = SimpleNamespace(pose=SimpleNamespace(orientation=q, position=SimpleNamespace(x=1.0, y=2.0, z=3.0)))
    np.testing.assert_allclose(extract(spec(topic="/x", field="pose.orientation", orientation="euler"), obj), [0, 0, 0.5])
    assert extract(spec(topic="/x", field="pose.position"), obj).tolist() == [1, 2, 3]
    assert normalize_msgtype("std_msgs/Float64") == "std_msgs/msg/Float64"
    assert normalize_msgtype("std_msgs/msg/Float64") == "std_msgs/msg/Float64"
    assert msgtype_of(float_array([1.0])) == FA and msgtype_of(obj) == ""


def test_rclpy_messages_go_through_the_same_code():
    pytest.importorskip("sensor_msgs.msg", reason="ROS 2 message wheels not installed")
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    js = JointState()
    js.name = ["a", "b"]
    js.position = [1.0, 2.0]
    js.velocity = [3.0, 4.0]
    assert msgtype_of(js) == JS
    assert extract(spec(topic="/js", field="position", joints=["b", "a"]), js).tolist() == [2, 1]
    assert extract(spec(topic="/js", field="velocity"), js).tolist() == [3, 4]
    fa = Float64MultiArray()
    fa.data = [5.0, 6.0]
    assert extract(spec(topic="/o", type="std_msgs/msg/Float64MultiArray"), fa).tolist() == [5, 6]
    ps = PoseStamped()
    ps.pose.position.x = 1.5
    q = yaw_quat(0.7)
    ps.pose.orientation.w, ps.pose.orientation.z = q[0], q[3]
    np.testing.assert_allclose(extract(spec(topic="/p", field="pose", orientation="euler"), ps), [1.5, 0, 0, 0, 0, 0.7])
    with pytest.raises(UserError, match="has no field 'pose.velocity'"):
        extract(spec(topic="/p", field="pose.velocity"), ps)


def test_quat_to_euler_matches_transforms3d_and_handles_zero():
    rng = np.random.default_rng(3)
    for _ in range(200):
        q = rng.normal(size=4)
        ref = np.array(quat2euler(q / np.linalg.norm(q), "sxyz"))
        got = quat_to_euler(q)
        assert np.abs(np.angle(np.exp(1j * (ref - got)))).max() < 1e-9
    assert np.isnan(quat_to_euler(np.zeros(4))).all()


def test_assembler_concatenates_in_spec_order():
    specs = [
        spec(topic="/js", field="position", joints=["shoulder"], type=JS),
        spec(topic="/o", type="std_msgs/Float64MultiArray"),
        spec(topic="/js", field="velocity", joints=["elbow", "wrist"]),
    ]
    asm = VectorAssembler(specs)
    assert asm.topics() == {"/js": JS, "/o": FA}
    assert asm.dims == [1, None, 2] and asm.dim is None
    assert not asm.ready() and asm.oldest_stamp_ns() is None
    assert asm.update("/unused", float_array([1.0]), 5) == []
    assert asm.update("/js", joint_state(10, JOINTS, [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]), 10) == [0, 2]
    assert asm.missing() == ["/o:data"]
    with pytest.raises(UserError, match="no value yet for /o:data"):
        asm.vector()
    asm.update("/o", float_array([7.0, 8.0]), 20)
    assert asm.ready() and asm.dim == 5 and asm.oldest_stamp_ns() == 10
    assert asm.vector().tolist() == [2, 7, 8, 4, 6]
    asm.update("/js", joint_state(30, JOINTS, [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]), 30)
    assert asm.vector().tolist() == [0, 7, 8, 1, 1] and asm.oldest_stamp_ns() == 20
    assert asm.element_names() == [
        "/js:position[shoulder]", "/o:data[0]", "/o:data[1]", "/js:velocity[elbow]", "/js:velocity[wrist]"
    ]
    asm.reset()
    assert not asm.ready() and asm.dim == 5


def test_assembler_dimension_change_and_non_finite():
    asm = VectorAssembler([spec(topic="/o", indices=[0])], max_abs=100.0)
    asm.update("/o", float_array([1.0, 2.0]), 1)
    with pytest.raises(UserError, match=r"topic '/o' field 'data': dimension changed from 2 to 3"):
        asm.update("/o", float_array([1.0, 2.0, 3.0]), 2)
    asm.update("/o", float_array([np.nan, 2.0]), 3_000_000_000)
    assert not asm.finite() and asm.bad_fields() == [0]
    with pytest.raises(UserError, match=r"topic '/o' field 'data': element 0 is NaN at stamp 3.000 s"):
        asm.vector()
    asm.update("/o", float_array([1e5, 2.0]), 4)
    with pytest.raises(UserError, match=r"element 0 is 100000 \(\|x\| > 100\)"):
        asm.vector()
    asm.update("/o", float_array([-np.inf, 2.0]), 4)
    with pytest.raises(UserError, match="is inf"):
        asm.vector()
    asm.update("/o", float_array([5.0, np.nan]), 5)  # element 1 is not selected: fine
    assert asm.finite() and asm.vector().tolist() == [5]


def test_assembler_rejects_conflicting_types_and_empty():
    with pytest.raises(UserError, match="two message types"):
        VectorAssembler([spec(topic="/o", type=FA), spec(topic="/o", type="std_msgs/msg/Float32MultiArray")])
    with pytest.raises(UserError, match="no fields"):
        VectorAssembler([])
    asm = VectorAssembler([spec(topic="/o")], types={"/o": "std_msgs/Float64MultiArray"})
    assert asm.topics() == {"/o": FA}


def test_element_names():
    assert element_names(spec(topic="/p", field="pose.orientation", orientation="euler"), 3) == [
        "/p:pose.orientation[roll]", "/p:pose.orientation[pitch]", "/p:pose.orientation[yaw]"
    ]
    assert element_names(spec(topic="/p", field="pose.position", indices=[2]), 1) == ["/p:pose.position[z]"]
    assert element_names(spec(topic="/js", field="position"), 3) == [f"/js:position[{i}]" for i in range(3)]


# --------------------------------------------------------------------------- stamps and freshness
MS = 1_000_000
EPOCH = 1_700_000_000 * 1_000_000_000  # a ROS time (ns since the epoch) for header stamps


def js_at(stamp_ns, names=JOINTS, pos=(1.0, 2.0, 3.0)):
    return joint_state(stamp_ns, names, list(pos), [0.0] * len(pos))


def test_header_stamp_sets_the_age_and_receive_switch_ignores_it():
    specs = [spec(topic="/js", field="position", joints=["elbow"], type=JS),
             spec(topic="/js", field="velocity", joints=["elbow"], type=JS, stamp="receive")]
    asm = VectorAssembler(specs, period_s=0.01, stale_periods=2)
    # Received at local time 1000 ms; the header says the sample is 4 ms older than the ROS receive time.
    assert asm.update("/js", js_at(EPOCH - 4 * MS), 1000 * MS, ros_ns=EPOCH) == [0, 1]
    assert asm.stamp_ns(0) == EPOCH - 4 * MS and asm.stamp_ns(1) == EPOCH
    assert asm.age_ns(0, 1000 * MS) == 4 * MS and asm.age_ns(1, 1000 * MS) == 0
    assert asm.max_age_ns(0) == 20 * MS
    assert asm.faults(1016 * MS) == []
    late = asm.faults(1017 * MS)  # field 0: 21 ms old > 20; field 1: 17 ms
    assert [(f.kind, f.field, f.name) for f in late] == [("stale", 0, "/js:position")]
    assert late[0].stamp_ns == EPOCH - 4 * MS and "max_age 20.0 ms" in str(late[0])


def test_max_age_from_topic_rates_spec_or_period():
    specs = [spec(topic="/js", field="position", type=JS), spec(topic="/target", type=FA),
             spec(topic="/o", type=FA, max_age_s=0.5), spec(topic="/u", type=FA)]
    asm = VectorAssembler(specs, rates_hz={"/js": 500.0, "/target": 10.0, "/o": 10.0}, period_s=0.01,
                          stale_periods=2)
    # 500 Hz is faster than the 100 Hz consumer: two consumer periods; 10 Hz: two of its own periods.
    assert [asm.max_age_ns(i) for i in range(4)] == [20 * MS, 200 * MS, 500 * MS, 20 * MS]
    assert VectorAssembler([spec(topic="/u")]).max_age_ns(0) is None  # nothing known: no limit


def test_a_stamp_that_does_not_advance_is_not_new_so_a_frozen_driver_goes_stale():
    asm = VectorAssembler([spec(topic="/js", field="position", joints=["wrist"], type=JS)], period_s=0.01,
                          stale_periods=2)
    assert asm.update("/js", js_at(EPOCH, pos=(0, 0, 1.0)), 0, ros_ns=EPOCH) == [0]
    for k in range(1, 10):  # the driver republishes the same sample (same stamp, even other values)
        assert asm.update("/js", js_at(EPOCH, pos=(0, 0, 2.0)), k * 10 * MS, ros_ns=EPOCH + k * 10 * MS) == []
    assert asm.value(0).tolist() == [1.0]
    (fault,) = asm.faults(90 * MS)
    assert fault.kind == "frozen" and fault.name == "/js:position" and "9 later sample(s)" in fault.detail
    assert asm.update("/js", js_at(EPOCH + 95 * MS), 95 * MS, ros_ns=EPOCH + 95 * MS) == [0]
    assert asm.faults(96 * MS) == []


def test_implausible_header_stamp_is_a_clock_fault_until_a_good_one():
    asm = VectorAssembler([spec(topic="/js", field="position", joints=["wrist"], type=JS)],
                          clock_tolerance_s=0.5, period_s=0.01)
    assert asm.update("/js", js_at(EPOCH - 2_000 * MS), 0, ros_ns=EPOCH) == [0]  # kept, at its receive time
    assert asm.stamp_ns(0) == EPOCH
    (fault,) = asm.faults(0)
    assert fault.kind == "clock" and "2.000 s behind the receive time" in fault.detail
    assert "stamp: receive" in fault.detail
    asm.update("/js", js_at(EPOCH + 1 * MS), 10 * MS, ros_ns=EPOCH + 10 * MS)
    assert asm.faults(10 * MS) == []
    asm.update("/js", js_at(EPOCH + 900 * MS), 20 * MS, ros_ns=EPOCH + 20 * MS)
    assert asm.faults(20 * MS)[0].detail.startswith("header stamp 0.880 s ahead of")
    # With stamp: receive the same message is fine (and its header is ignored).
    recv = VectorAssembler([spec(topic="/js", field="position", type=JS, stamp="receive")])
    assert recv.update("/js", js_at(EPOCH - 2_000 * MS), 0, ros_ns=EPOCH) == [0] and recv.stamp_ns(0) == EPOCH


def test_missing_joint_marks_the_field_rejected_by_name_until_a_good_message():
    specs = [spec(topic="/js", field="position", joints=["shoulder", "elbow"], type=JS), spec(topic="/o", type=FA)]
    asm = VectorAssembler(specs)
    asm.update("/js", js_at(EPOCH), 0, ros_ns=EPOCH)
    asm.update("/o", float_array([1.0]), 0)
    assert asm.faults(0) == []
    with pytest.raises(UserError, match="joint 'elbow' not in JointState"):
        asm.update("/js", joint_state(EPOCH + 1, ["shoulder", "wrist"], [0.0, 0.0]), 1, ros_ns=EPOCH + 1)
    (fault,) = asm.faults(2)
    assert fault.kind == "rejected" and fault.name == "/js:position" and "'elbow'" in fault.detail
    asm.update("/js", js_at(EPOCH + 2), 2, ros_ns=EPOCH + 2)
    assert asm.faults(3) == []


def test_nonfinite_and_out_of_range_elements_are_named():
    specs = [spec(topic="/js", field="position", joints=["wrist", "elbow"], type=JS), spec(topic="/o", type=FA)]
    asm = VectorAssembler(specs, max_abs=10.0)
    asm.update("/js", js_at(EPOCH, pos=(np.nan, 0.0, 0.0)), 0, ros_ns=EPOCH)  # elbow is NaN
    asm.update("/o", float_array([1.0, 50.0]), 0)
    f1, f2 = asm.faults(0)
    assert (f1.kind, f1.name, f1.stamp_ns) == ("nonfinite", "/js:position[elbow]", EPOCH)
    assert "element 1 is NaN" in str(f1) and f"stamp {EPOCH * 1e-9:.6f} s" in str(f1)
    assert (f2.kind, f2.name) == ("range", "/o:data[1]") and "50 (|x| > 10)" in f2.detail
    with pytest.raises(UserError, match=r"element 1 \(elbow\) is NaN"):
        asm.vector()


def test_field_spec_stamp_and_max_age_are_validated():
    with pytest.raises(UserError, match=r"test.stamp: 'header' or 'receive', got 'bag'"):
        spec(topic="/o", stamp="bag")
    with pytest.raises(UserError, match=r"test.max_age_s: must be > 0"):
        spec(topic="/o", max_age_s=0)
