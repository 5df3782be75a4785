"""DyDiff: a diffusion world model for offline RL and for SMILING without a simulator."""
