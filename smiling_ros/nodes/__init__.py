"""ROS 2 nodes (rclpy): thin translations between topics and the project's core objects.

- sim_node: a MuJoCo task as a robot (joint states, observation, commands, episode markers)
- recorder_node: configured topics -> rosbag2 (MCAP or sqlite3) through ``rosbags``
- trainer_node, controller_node: learning from and acting on a robot over topics

Each module has ``main()`` (console scripts of the same name, ``ros2 run smiling_ros <node>``).
"""
