"""The offline half: learning from recorded datasets alone, with no environment interaction.

- :mod:`smiling_ros.methods.dbc.train`: Diffusion Model-Augmented Behavioural Cloning (an ``mlp_policy``).
- :mod:`smiling_ros.methods.dydiff.train`: DyDiff world model (window diffusion + single-step ensemble +
  reward model) and its policy-injected rollouts.
- :mod:`smiling_ros.methods.dydiff.td3bc`: TD3+BC, the offline learner fed with real and synthetic batches.
- :mod:`smiling_ros.methods.dydiff.world_model_env`: a Gymnasium env stepping the DyDiff world model, so
  SMILING's RL step runs from a bag alone.
"""
