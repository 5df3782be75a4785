"""The ROS 2 layer (rclpy): QoS profiles, message helpers, a Gymnasium env over topics.
Nodes live in smiling_ros.nodes. Nothing outside these two packages imports rclpy."""
