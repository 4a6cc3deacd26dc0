"""Polynomial-decay learning-rate schedule with ``--warmup-ratio`` (OFA's ``polynomial_decay``).

Registered as ``--lr-scheduler polynomial_decay_ratio``: stock fairseq already owns the name ``polynomial_decay``
and refuses a duplicate registration.

Schedule, with ``n`` the number of updates done, ``lr`` the base learning rate, ``end`` ``--end-learning-rate``::

    n <= warmup (warmup > 0):  lr * n / warmup
    warmup < n < total:        end + (lr - end) * (1 - (n - warmup) / (total - warmup)) ** power
    n >= total:                end

``warmup = int(total * warmup_ratio)`` when ``--warmup-ratio`` > 0, else ``--warmup-updates``.

Where ``total`` comes from, first match wins:

1. ``--total-num-update N``;
2. ``--max-update N`` (N > 0);
3. ``--max-epoch E``: ``total = sum over epochs e < E of ceil(B / update_freq[e])`` (``= E * ceil(B / F)`` for a single
   ``--update-freq F``), where ``B`` is the number of batches of one training epoch *on one rank* (``len(epoch_itr)``
   of fairseq's ``EpochBatchIterator``). This is what OFA's ``train.py`` computes and passes to
   ``trainer.lr_reinit``. The scheduler is built before the training data is, so ``B`` has to be handed to it:

   **Hook.** The task calls ``biomedgpt.optim.set_train_batches_per_epoch(len(epoch_itr))`` when it builds the
   training ``EpochBatchIterator`` (in its ``get_batch_iterator``, for the train split only). fairseq's ``train.py``
   always builds the train iterator before ``trainer.begin_epoch``; the scheduler reads the value lazily and fixes
   ``B`` (and so ``total`` and ``warmup``) for the rest of the run at the first ``step_begin_epoch`` or the first
   ``step_update`` with ``n > 0``, whichever comes first. (``task.begin_epoch`` is too late: fairseq calls it after
   the scheduler's ``step_begin_epoch``.) Code holding the scheduler object may call
   ``scheduler.set_train_batches_per_epoch(B)`` instead.

   OFA differs in two corner cases: it uses ``--max-epoch`` even when ``--max-update`` is also given, and only when
   ``--warmup-ratio`` > 0 (otherwise it keeps its default ``total_num_update`` of 1,000,000). Every BiomedGPT script
   gives a warmup ratio and no ``--max-update``, where both agree.

Resume. ``state_dict()`` (stored by fairseq in the checkpoint's ``optimizer_history``) records ``B``; after
``load_state_dict`` the total is recomputed from the saved ``B`` and the *current* ``--max-epoch``/``--update-freq``,
so an interrupted run continues on the same schedule even before the hook is called again, and a larger
``--max-epoch`` on resume stretches the schedule (as OFA's ``lr_reinit``). A hook value that disagrees with the
saved one is logged and ignored.

Errors. Construction raises ``ValueError`` when none of ``--total-num-update``, ``--max-update`` or ``--max-epoch``
is set. With only ``--max-epoch``, ``step_begin_epoch`` raises ``RuntimeError`` when a training epoch begins and the
hook has not supplied ``B``. (Before that, ``step_update`` tolerates the unknown total: fairseq calls it while building
the optimizer and while loading a checkpoint, before the train iterator exists.)
"""
import logging
import math
from dataclasses import dataclass, field
from typing import List, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II

logger = logging.getLogger(__name__)

_train_batches_per_epoch: Optional[int] = None


def set_train_batches_per_epoch(num_batches: Optional[int]) -> None:
    """Tell ``polynomial_decay_ratio`` schedulers how many batches one training epoch has on this rank.

    Call with ``len(epoch_itr)`` of the training ``EpochBatchIterator`` each time one is built (later calls are
    harmless: a scheduler keeps the first value it used). ``None`` clears the value (tests, long-lived processes).
    """
    global _train_batches_per_epoch
    if num_batches is not None and int(num_batches) <= 0:
        raise ValueError(f"the training epoch must have at least one batch, got {num_batches}")
    _train_batches_per_epoch = None if num_batches is None else int(num_batches)


def get_train_batches_per_epoch() -> Optional[int]:
    """The value last given to :func:`set_train_batches_per_epoch` (``None`` if unset)."""
    return _train_batches_per_epoch


def total_updates_for_epochs(batches_per_epoch: int, max_epoch: int, update_freq) -> int:
    """``sum_{e < max_epoch} ceil(batches_per_epoch / update_freq[e])``; the last ``update_freq`` entry repeats."""
    freqs = [int(update_freq)] if isinstance(update_freq, (int, float)) else [int(f) for f in update_freq]
    freqs = freqs or [1]
    if min(freqs) <= 0:
        raise ValueError(f"update_freq must be positive, got {freqs}")
    return sum(math.ceil(batches_per_epoch / freqs[min(epoch, len(freqs) - 1)]) for epoch in range(max_epoch))


@dataclass
class PolynomialDecayRatioConfig(FairseqDataclass):
    warmup_updates: int = field(
        default=0,
        metadata={"help": "warm the learning rate up linearly for the first N updates (if no --warmup-ratio)"},
    )
    warmup_ratio: float = field(
        default=0.0, metadata={"help": "warm up for int(total updates * ratio) updates; overrides --warmup-updates"}
    )
    force_anneal: Optional[int] = field(default=None, metadata={"help": "force annealing at specified epoch"})
    end_learning_rate: float = field(default=0.0, metadata={"help": "learning rate to decay to"})
    power: float = field(default=1.0, metadata={"help": "decay exponent"})
    total_num_update: Optional[int] = field(
        default=None,
        metadata={"help": "total number of updates over which to decay the learning rate (default: --max-update, "
                          "else derived from --max-epoch and the number of training batches per epoch)"},
    )
    lr: List[float] = II("optimization.lr")
    # no help text: fairseq adds no command-line flags for these (the --max-update etc. of `optimization` are used)
    max_update: int = II("optimization.max_update")
    max_epoch: int = II("optimization.max_epoch")
    update_freq: List[int] = II("optimization.update_freq")


@register_lr_scheduler("polynomial_decay_ratio", dataclass=PolynomialDecayRatioConfig)
class PolynomialDecayRatioSchedule(FairseqLRScheduler):
    """Linear warmup (by count or ratio) then polynomial decay; see the module docstring for the total-updates hook."""

    def __init__(self, cfg: PolynomialDecayRatioConfig, optimizer):
        super().__init__(cfg, optimizer)
        if not 0.0 <= cfg.warmup_ratio < 1.0:
            raise ValueError(f"--warmup-ratio must be in [0, 1), got {cfg.warmup_ratio}")
        if cfg.warmup_updates < 0:
            raise ValueError(f"--warmup-updates must be >= 0, got {cfg.warmup_updates}")
        if cfg.warmup_ratio > 0 and cfg.warmup_updates > 0:
            logger.warning("both --warmup-ratio and --warmup-updates are set: --warmup-ratio wins")
        self.lr = cfg.lr[0]
        self.end_learning_rate = cfg.end_learning_rate
        self.power = cfg.power

        if cfg.total_num_update is not None and cfg.total_num_update > 0:
            self._fixed_total, source = int(cfg.total_num_update), "--total-num-update"
        elif (cfg.max_update or 0) > 0:
            self._fixed_total, source = int(cfg.max_update), "--max-update"
        elif (cfg.max_epoch or 0) > 0:
            self._fixed_total, source = None, "--max-epoch"
        else:
            raise ValueError(
                "polynomial_decay_ratio cannot tell the total number of updates: give --total-num-update, "
                "--max-update, or --max-epoch (with the task calling "
                "biomedgpt.optim.set_train_batches_per_epoch(len(train_epoch_itr)))"
            )
        self._total_source = source
        self._batches_per_epoch: Optional[int] = None  # B, fixed once an epoch starts (epoch-derived total only)
        self._num_updates = 0
        self._announced = False
        self._warned_unknown = False
        self._ignored_batches: Optional[int] = None
        self.step_update(0)

    # --- the total-updates hook ---------------------------------------------------------------------------------
    def set_train_batches_per_epoch(self, num_batches: int) -> None:
        """Fix B (per-rank training batches per epoch) for this scheduler; same as the module-level hook."""
        if int(num_batches) <= 0:
            raise ValueError(f"the training epoch must have at least one batch, got {num_batches}")
        self._batches_per_epoch = int(num_batches)
        self.step_update(self._num_updates)

    def _current_batches(self) -> Optional[int]:
        if self._batches_per_epoch is not None:
            return self._batches_per_epoch
        return get_train_batches_per_epoch()

    def _freeze_batches(self) -> None:
        if self._fixed_total is not None:
            return
        hooked = get_train_batches_per_epoch()
        if self._batches_per_epoch is None:
            self._batches_per_epoch = hooked
        elif hooked is not None and hooked != self._batches_per_epoch and hooked != self._ignored_batches:
            self._ignored_batches = hooked
            logger.info(
                f"polynomial_decay_ratio keeps {self._batches_per_epoch} training batches per epoch (from the "
                f"checkpoint or first seen) and ignores the newer value {hooked}"
            )

    def _schedule(self, batches: Optional[int]):
        """(total, warmup) for a given B, or (None, None) while the total is unknown."""
        total = self._fixed_total
        if total is None and batches is not None:
            total = total_updates_for_epochs(batches, int(self.cfg.max_epoch), self.cfg.update_freq)
        if total is None:
            return None, None
        warmup = int(total * self.cfg.warmup_ratio) if self.cfg.warmup_ratio > 0 else int(self.cfg.warmup_updates)
        return total, warmup

    @property
    def total_num_update(self) -> Optional[int]:
        """Total updates of the schedule (``None`` while an epoch-derived total still waits for the hook)."""
        return self._schedule(self._current_batches())[0]

    @property
    def warmup_updates(self) -> Optional[int]:
        """Warmup updates of the schedule (``None`` while the total is unknown)."""
        return self._schedule(self._current_batches())[1]

    # --- fairseq scheduler API -------------------------------------------------------------------------------------
    def get_next_lr(self, epoch):
        lrs = self.cfg.lr
        if self.cfg.force_anneal is None or epoch < self.cfg.force_anneal:
            return lrs[min(epoch, len(lrs) - 1)]
        return self.optimizer.get_lr()  # anneal: keep the current lr as the base

    def step_begin_epoch(self, epoch):
        """Update the base learning rate at the beginning of an epoch; from here on the total must be known."""
        self._freeze_batches()
        if self.total_num_update is None:
            raise RuntimeError(
                "polynomial_decay_ratio: a training epoch begins but the total number of updates is unknown. "
                "With only --max-epoch, the task must call "
                "biomedgpt.optim.set_train_batches_per_epoch(len(train_epoch_itr)) when it builds the training "
                "iterator (get_batch_iterator); or give --max-update or --total-num-update."
            )
        self.lr = self.get_next_lr(epoch)
        return self.step_update(self._num_updates)

    def step_update(self, num_updates):
        """Set the learning rate for the update that follows ``num_updates`` completed updates."""
        self._num_updates = num_updates
        if num_updates > 0:
            self._freeze_batches()
        total, warmup = self._schedule(self._current_batches())
        if total is None:
            # fairseq calls step_update while building the optimizer and while loading a checkpoint, before the train
            # iterator (and so the hook) exists; step_begin_epoch raises if the hook never comes.
            if num_updates > 0 and not self._warned_unknown:
                self._warned_unknown = True
                logger.info(f"polynomial_decay_ratio: total updates not known yet at update {num_updates} (waiting "
                            f"for the training iterator); lr unchanged")
            if num_updates == 0:
                warmup_configured = self.cfg.warmup_ratio > 0 or self.cfg.warmup_updates > 0
                self.optimizer.set_lr(0.0 if warmup_configured else self.lr)
            return self.optimizer.get_lr()
        if not self._announced and (num_updates > 0 or self._batches_per_epoch is not None or self._fixed_total):
            self._announced = True
            logger.info(f"polynomial_decay_ratio: {total} total updates ({self._total_source}), {warmup} warmup")

        if warmup > 0 and num_updates <= warmup:
            lr = self.lr * num_updates / warmup
        elif num_updates >= total:
            lr = self.end_learning_rate
        else:
            remaining = 1.0 - (num_updates - warmup) / (total - warmup)
            lr = self.end_learning_rate + (self.lr - self.end_learning_rate) * remaining ** self.power
        self.optimizer.set_lr(lr)
        return self.optimizer.get_lr()

    def state_dict(self):
        state = super().state_dict()
        total, warmup = self._schedule(self._current_batches())
        state.update(
            train_batches_per_epoch=self._batches_per_epoch,  # the input needed to rebuild an epoch-derived total
            total_num_update=total,  # informational: recomputed from the config on load
            warmup_updates=warmup,
        )
        return state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        batches = state_dict.get("train_batches_per_epoch")
        if batches is not None:
            self._batches_per_epoch = int(batches)
