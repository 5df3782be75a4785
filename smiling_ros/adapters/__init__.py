"""ROS-free adapters: ROS messages <-> vectors (fields), rosbag2 files <-> datasets (bag)."""
