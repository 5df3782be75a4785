"""Datasets, episodes and evaluation rollouts (no ROS)."""
