"""Training infrastructure every method shares: diffusion, nets, checkpoints, policies, devices."""
