"""smiling_ros: robot demonstrations from ROS 2 topics to a deployed diffusion policy.

Layers (one direction of dependency):
  core (no ROS import): errors, config, dataset, diffusion, checkpoint, envs, smiling, bridger, offline
  adapters (no ROS import): ROS messages <-> vectors, rosbag2 <-> dataset (rosbags library)
  ROS layer (rclpy): smiling_ros.ros (Gymnasium env over topics, QoS), smiling_ros.nodes
  CLI: smiling_ros.cli (`smiling-ros <verb>`)
"""

__version__ = "0.1.0"
