"""Messages and files in and out: field mappings, rosbag2, bag import (no rclpy)."""
