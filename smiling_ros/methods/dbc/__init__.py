"""DBC: diffusion-model-augmented behavioural cloning."""
