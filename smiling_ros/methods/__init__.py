"""The learning methods, one package each: ``smiling/`` (SMILING, with DAC and SAC on its online loop),
``bridger/``, ``dbc/`` (DBC, and BC as DBC with lambda 0), ``dydiff/`` (world model + TD3+BC); ``bc.py``
is ``train-bc`` (DBC's BC path with a run directory and evaluation).

Each method keeps its options in ``<name>/config.py`` (a dataclass registered below), its model and
loss beside them, and its training in ``<name>/train.py`` as ``fit(cfg, dataset, *, out, env_fn=None,
callback=None) -> TrainResult`` on the shared loop of :mod:`smiling_ros.learn.fit`.
"""

SECTIONS: dict[str, str] = {
    "smiling": "smiling_ros.methods.smiling.config:SmilingSection",
    "expert": "smiling_ros.methods.smiling.config:ExpertSection",
    "bridger": "smiling_ros.methods.bridger.config:BridgerConfig",
    "dbc": "smiling_ros.methods.dbc.config:DBCConfig",
    "dydiff": "smiling_ros.methods.dydiff.config:DyDiffConfig",
}
"""Config sections of the methods: name -> ``"module:Dataclass"`` (see :func:`smiling_ros.config.registered_sections`)."""

TRAINERS: dict[str, str] = {
    "smiling": "smiling_ros.methods.smiling.trainer:train",
    "dac": "smiling_ros.methods.smiling.dac:train_dac",
    "bc": "smiling_ros.methods.bc:train_bc",
}
"""Trainers of the ``trainer_node`` ``method`` parameter and the ``train-<method>`` verbs that share its
arguments: name -> ``"module:function"``."""


def trainer(name: str, where: str = "method"):  # noqa: ANN201 - the registered function
    """The trainer registered as ``name``; one-line error naming ``where`` otherwise."""
    import importlib

    from smiling_ros.errors import UserError

    if name not in TRAINERS:
        raise UserError(f"{where}: one of {', '.join(TRAINERS)}, got '{name}'")
    mod, _, fn = TRAINERS[name].partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError):
        raise UserError(f"{where}: '{name}' is not available in this installation") from None
