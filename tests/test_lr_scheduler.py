"""`polynomial_decay_ratio`: OFA's polynomial decay with --warmup-ratio and a total derived from --max-epoch."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq.optim import FairseqOptimizer
from fairseq.optim.lr_scheduler import build_lr_scheduler

import biomedgpt.optim  # noqa: F401  (registers the scheduler)
from biomedgpt.optim import (
    PolynomialDecayRatioConfig,
    PolynomialDecayRatioSchedule,
    set_train_batches_per_epoch,
    total_updates_for_epochs,
)


class _SGD(FairseqOptimizer):
    def __init__(self):
        super().__init__(None)
        self._optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)


@pytest.fixture(autouse=True)
def _no_hook_value():
    set_train_batches_per_epoch(None)
    yield
    set_train_batches_per_epoch(None)


def make(**overrides):
    values = {"lr": [1e-3], "max_update": 0, "max_epoch": 0, "update_freq": [1]}
    values.update(overrides)
    return PolynomialDecayRatioSchedule(PolynomialDecayRatioConfig(**values), _SGD())


def expected_lr(n, lr, total, warmup, end=0.0, power=1.0):
    if warmup > 0 and n <= warmup:
        return lr * n / warmup
    if n >= total:
        return end
    return end + (lr - end) * (1 - (n - warmup) / (total - warmup)) ** power


@pytest.mark.parametrize("n", [0, 1, 10, 20, 21, 60, 110, 199, 200, 250])
def test_warmup_ratio_schedule(n):
    sched = make(max_update=200, warmup_ratio=0.1, end_learning_rate=1e-5, power=2.0)
    assert (sched.total_num_update, sched.warmup_updates) == (200, 20)
    lr = sched.step_update(n)
    assert lr == pytest.approx(expected_lr(n, 1e-3, 200, 20, end=1e-5, power=2.0), rel=1e-12, abs=1e-15)
    assert sched.optimizer.get_lr() == lr


def test_hand_computed_points():
    sched = make(max_update=100, warmup_ratio=0.06)  # warmup int(6.0) = 6
    assert sched.step_update(3) == pytest.approx(0.5e-3)  # halfway through warmup
    assert sched.step_update(6) == pytest.approx(1e-3)  # peak
    assert sched.step_update(53) == pytest.approx(0.5e-3)  # (1 - 47/94) * lr
    assert sched.step_update(100) == 0.0


@pytest.mark.parametrize("n", [0, 4, 8, 9, 50, 99, 100, 101])
def test_warmup_updates_schedule(n):
    sched = make(max_update=100, warmup_updates=8)
    assert sched.warmup_updates == 8
    assert sched.step_update(n) == pytest.approx(expected_lr(n, 1e-3, 100, 8), rel=1e-12, abs=1e-15)


def test_no_warmup_starts_at_full_lr():
    sched = make(max_update=10)
    assert sched.optimizer.get_lr() == pytest.approx(1e-3)
    assert sched.step_update(5) == pytest.approx(0.5e-3)


def test_total_num_update_wins_over_max_update():
    sched = make(max_update=100, total_num_update=40, warmup_ratio=0.25)
    assert (sched.total_num_update, sched.warmup_updates) == (40, 10)
    assert sched.step_update(25) == pytest.approx(expected_lr(25, 1e-3, 40, 10))


def test_max_update_wins_over_max_epoch_and_ignores_the_hook():
    set_train_batches_per_epoch(1000)
    sched = make(max_update=50, max_epoch=3)
    assert sched.total_num_update == 50


@pytest.mark.parametrize("batches, max_epoch, update_freq, total", [
    (10, 3, [1], 30),
    (10, 3, [4], 9),  # 3 * ceil(10 / 4)
    (12, 2, [4], 6),
    (10, 3, [1, 2], 20),  # 10 + 5 + 5: the last --update-freq entry repeats
    (7, 1, 3, 3),
])
def test_total_updates_for_epochs(batches, max_epoch, update_freq, total):
    assert total_updates_for_epochs(batches, max_epoch, update_freq) == total
    assert total == sum(math.ceil(batches / update_freq[min(e, len(update_freq) - 1)]
                                  if isinstance(update_freq, list) else batches / update_freq)
                        for e in range(max_epoch))


def test_total_derived_from_max_epoch_via_module_hook():
    sched = make(max_epoch=3, update_freq=[4], warmup_ratio=0.34)
    assert sched.total_num_update is None  # not known until the train iterator exists
    set_train_batches_per_epoch(10)
    assert (sched.total_num_update, sched.warmup_updates) == (9, 3)  # 3 * ceil(10/4); int(9 * 0.34)
    sched.step_begin_epoch(1)
    for n in range(12):
        assert sched.step_update(n) == pytest.approx(expected_lr(n, 1e-3, 9, 3), abs=1e-15)


def test_hook_value_set_before_the_scheduler_exists():
    set_train_batches_per_epoch(10)  # fresh fairseq-train: the train iterator is built before trainer.get_lr()
    sched = make(max_epoch=2, warmup_ratio=0.1)
    assert (sched.total_num_update, sched.warmup_updates) == (20, 2)


def test_instance_hook():
    sched = make(max_epoch=2, update_freq=[2])
    sched.set_train_batches_per_epoch(9)
    assert sched.total_num_update == 10


def test_batches_per_epoch_are_fixed_once_training_starts():
    set_train_batches_per_epoch(10)
    sched = make(max_epoch=2)
    sched.step_begin_epoch(1)
    sched.step_update(1)
    set_train_batches_per_epoch(50)  # e.g. a rotated training file of another size in epoch 2
    sched.step_begin_epoch(2)
    assert sched.total_num_update == 20


def test_unknown_total_before_training_is_tolerated_then_an_error():
    sched = make(max_epoch=3, warmup_ratio=0.1)
    assert sched.step_update(0) == 0.0  # built before the train iterator: warmup starts from 0 anyway
    with pytest.raises(RuntimeError, match="set_train_batches_per_epoch"):
        sched.step_begin_epoch(1)


def test_no_way_to_know_the_total_is_an_error():
    with pytest.raises(ValueError, match="--max-epoch"):
        make(warmup_ratio=0.1)


def test_invalid_warmup_ratio():
    with pytest.raises(ValueError, match="warmup-ratio"):
        make(max_update=10, warmup_ratio=1.5)


def test_state_dict_round_trip(tmp_path):
    set_train_batches_per_epoch(10)
    sched = make(max_epoch=3, update_freq=[2], warmup_ratio=0.2)
    sched.step_begin_epoch(1)
    for n in range(1, 8):
        sched.step_update(n)
    state = sched.state_dict()
    assert state == {"best": None, "train_batches_per_epoch": 10, "total_num_update": 15, "warmup_updates": 3}
    torch.save(state, tmp_path / "state.pt")  # plain Python values, loadable with weights_only
    state = torch.load(tmp_path / "state.pt", weights_only=True)

    set_train_batches_per_epoch(None)  # resuming: checkpoint loaded before the train iterator is rebuilt
    resumed = make(max_epoch=3, update_freq=[2], warmup_ratio=0.2)
    resumed.load_state_dict(state)
    assert (resumed.total_num_update, resumed.warmup_updates) == (15, 3)
    for n in (7, 8, 12, 15):
        assert resumed.step_update(n) == pytest.approx(expected_lr(n, 1e-3, 15, 3), abs=1e-15)
    resumed.step_begin_epoch(2)  # no hook call needed after a resume

    longer = make(max_epoch=5, update_freq=[2], warmup_ratio=0.2)  # resumed with a larger --max-epoch
    longer.load_state_dict(state)
    assert (longer.total_num_update, longer.warmup_updates) == (25, 5)


def test_state_dict_without_derived_total():
    sched = make(max_update=100)
    state = sched.state_dict()
    assert state["train_batches_per_epoch"] is None and state["total_num_update"] == 100
    other = make(max_update=100)
    other.load_state_dict({"best": 1.5})  # state saved by another scheduler (e.g. stock polynomial_decay)
    assert other.best == 1.5 and other.total_num_update == 100


def test_fairseq_train_arguments_are_accepted():
    args = options.parse_args_and_arch(options.get_training_parser(), [
        "DATA", "--task", "ofa", "--arch", "ofa_tiny", "--optimizer", "adam", "--lr", "5e-5",
        "--lr-scheduler", "polynomial_decay_ratio", "--warmup-ratio", "0.06", "--max-epoch", "3",
        "--update-freq", "4",
    ])
    assert args.warmup_ratio == 0.06 and args.total_num_update is None
    cfg = convert_namespace_to_omegaconf(args)
    sc = cfg.lr_scheduler
    assert sc._name == "polynomial_decay_ratio"
    assert (sc.warmup_ratio, sc.max_epoch, sc.max_update) == (0.06, 3, 0)
    assert (list(sc.update_freq), list(sc.lr)) == ([4], [5e-5])
    sched = build_lr_scheduler(sc, _SGD())
    assert isinstance(sched, PolynomialDecayRatioSchedule)
    set_train_batches_per_epoch(100)
    assert (sched.total_num_update, sched.warmup_updates) == (75, 4)  # 3 * ceil(100/4); int(4.5)


def test_stock_polynomial_decay_is_untouched():
    args = options.parse_args_and_arch(options.get_training_parser(), [
        "DATA", "--task", "ofa", "--arch", "ofa_tiny", "--lr-scheduler", "polynomial_decay", "--max-update", "10",
    ])
    assert not hasattr(args, "warmup_ratio")


_PLUGIN = '''
import os
from fairseq.benchmark.dummy_lm import DummyLMConfig, DummyLMTask
from fairseq.tasks import register_task
import biomedgpt.optim


@register_task("lr_hook_dummy_lm", dataclass=DummyLMConfig)
class LrHookDummyLM(DummyLMTask):
    def get_batch_iterator(self, dataset, **kwargs):
        epoch_itr = super().get_batch_iterator(dataset, **kwargs)
        if dataset is self.datasets.get("train") and not os.environ.get("NO_LR_HOOK"):
            biomedgpt.optim.set_train_batches_per_epoch(len(epoch_itr))
        return epoch_itr
'''


def _train(tmp_path, save_dir, no_hook=False):
    cmd = [sys.executable, "-m", "fairseq_cli.train", "--user-dir", str(tmp_path / "lr_hook_plugin"),
           "--task", "lr_hook_dummy_lm", "--arch", "transformer_lm", "--decoder-layers", "1",
           "--decoder-embed-dim", "16", "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "2",
           "--tokens-per-sample", "16", "--dict-size", "100", "--dataset-size", "80", "--batch-size", "8",
           "--max-epoch", "3", "--update-freq", "2", "--optimizer", "adam", "--lr", "1e-3",
           "--lr-scheduler", "polynomial_decay_ratio", "--warmup-ratio", "0.2", "--cpu", "--log-format", "json",
           "--log-interval", "1", "--save-dir", str(save_dir), "--disable-validation", "--num-workers", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if no_hook:
        env["NO_LR_HOOK"] = "1"
    result = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
    log = result.stdout + result.stderr
    lrs = {}  # num_updates -> lr logged after that update (the lr of the next one)
    for line in log.splitlines():
        if "| train_inner |" in line:
            record = json.loads(line[line.index("{"):])
            lrs[int(record["num_updates"])] = float(record["lr"])
    return result.returncode, log, lrs


@pytest.mark.slow
def test_fairseq_train_with_max_epoch_and_resume(tmp_path):
    """Real `fairseq-train`: 80 rows / batch 8 = 10 batches per epoch, update_freq 2 -> 5 updates per epoch,
    3 epochs -> 15 updates, warmup int(15 * 0.2) = 3. Then resume from the epoch-1 checkpoint without the hook."""
    (tmp_path / "lr_hook_plugin").mkdir()
    (tmp_path / "lr_hook_plugin" / "__init__.py").write_text(_PLUGIN)
    rc, log, lrs = _train(tmp_path, tmp_path / "full")
    assert rc == 0, log[-3000:]
    assert "polynomial_decay_ratio: 15 total updates (--max-epoch), 3 warmup" in log
    assert sorted(lrs) == list(range(1, 16))
    for n, lr in lrs.items():
        assert lr == pytest.approx(expected_lr(n, 1e-3, 15, 3), rel=1e-5, abs=1e-9), n

    resume_dir = tmp_path / "resume"
    resume_dir.mkdir()
    (resume_dir / "checkpoint_last.pt").write_bytes((tmp_path / "full" / "checkpoint1.pt").read_bytes())
    rc, log, resumed = _train(tmp_path, resume_dir, no_hook=True)  # total rebuilt from the checkpoint's state
    assert rc == 0, log[-3000:]
    assert resumed == {n: lr for n, lr in lrs.items() if n > 5}

    rc, log, _ = _train(tmp_path, tmp_path / "no_hook", no_hook=True)  # fresh run, task never calls the hook
    assert rc != 0 and "set_train_batches_per_epoch" in log
