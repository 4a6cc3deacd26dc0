"""Optimisation components of the plugin (importing registers them with fairseq).

`polynomial_decay_ratio`: OFA's polynomial-decay schedule with `--warmup-ratio`. Tasks that train with only
`--max-epoch` call :func:`set_train_batches_per_epoch` with `len(epoch_itr)` of the training iterator.
"""
from .polynomial_decay_ratio import (  # noqa: F401
    PolynomialDecayRatioConfig,
    PolynomialDecayRatioSchedule,
    get_train_batches_per_epoch,
    set_train_batches_per_epoch,
    total_updates_for_epochs,
)
