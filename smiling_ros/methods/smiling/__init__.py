"""SMILING: imitation by diffusing states and matching scores (Wu et al., ICLR 2025), with its
baselines on the same loop.

- :mod:`.config`   options of the ``smiling`` and ``expert`` config sections
- :mod:`.score`    score players (expert net frozen, learner net Follow-the-Leader) and the DS cost
- :mod:`.buffer`   SB3 replay buffer that relabels rewards at sample time
- :mod:`.rl`       SB3 SAC construction, pickle-free state save/restore, actor export
- :mod:`.trainer`  ``train(cfg, dataset, out_dir, ...)`` (SMILING) and the shared loop ``run``
- :mod:`.dac`      DAC baseline (``train_dac``)
- :mod:`.bc`       behavioural cloning baseline (``train_bc``)
"""
