"""Data-parallel training on CPU: `torchrun --nproc_per_node 2` (gloo) around stock `fairseq-train` with the plugin.

One real run of 3 updates on the tiny model shows that the two ranks trained on different samples (each rank's
share of fairseq's sharded batch iterator) and ended with identical parameters, equal to the saved checkpoint;
the same run writes TensorBoard events with the training loss. No test-side patch of fairseq is needed:
`biomedgpt.compat` makes CPU torchrun work (env:// init, DDP without device_ids).

How it is observed: torchrun starts `DRIVER` instead of the `fairseq-train` script. The driver wraps two methods
of fairseq's `Trainer` class, only to record (the constructor keeps the trainer; `train_step` notes the sample ids
of each update), runs `fairseq_cli.train.cli_main()` unchanged, and afterwards writes per rank the ids and a
SHA-256 per tensor of the final state of `trainer.get_model()`. All parameters are identical on both ranks;
BatchNorm running statistics are not (fairseq's DDP does not broadcast buffers), and rank 0 saves its own.
"""
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from synthetic import write_task_data
from test_tasks_e2e import TASKS, TINY

USER_DIR = os.path.dirname(__import__("biomedgpt").__file__)
BATCH, UPDATES, ROWS = 4, 3, 24  # 24 rows -> 12 per rank -> 3 batches of 4: one epoch is the whole run

DRIVER = '''
import hashlib, json, os, sys
from fairseq import trainer as trainer_module
from fairseq_cli import train

seen = {"ids": [], "trainer": None}
Trainer = trainer_module.Trainer
init, train_step = Trainer.__init__, Trainer.train_step


def recording_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    seen["trainer"] = self


def recording_train_step(self, samples, *args, **kwargs):
    seen["ids"].append(sorted(int(i) for sample in samples if sample for i in sample["id"]))
    return train_step(self, samples, *args, **kwargs)


Trainer.__init__, Trainer.train_step = recording_init, recording_train_step
train.cli_main()

trainer = seen["trainer"]
tensors = {name: hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
           for name, tensor in trainer.get_model().state_dict().items()}
rank = trainer.data_parallel_rank
with open(os.path.join(os.environ["DRIVER_OUT"], f"rank{rank}.json"), "w") as handle:
    json.dump({"rank": rank, "world_size": trainer.data_parallel_world_size, "ids": seen["ids"],
               "tensors": tensors, "parameters": [n for n, _ in trainer.get_model().named_parameters()]}, handle)
'''


def digests(state):
    return {name: hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
            for name, tensor in state.items()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ddp")
    data = write_task_data(str(folder), "vqa_gen", train=ROWS)
    driver = folder / "driver.py"
    driver.write_text(DRIVER)
    out = folder / "ranks"
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(driver),
           data, "--user-dir", USER_DIR, "--task", "vqa_gen", *TINY, *TASKS["vqa_gen"][0],
           "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--optimizer", "adam",
           "--lr", "1e-3", "--batch-size", str(BATCH), "--max-update", str(UPDATES), "--cpu",
           "--distributed-world-size", "2", "--distributed-backend", "gloo", "--ddp-backend", "pytorch_ddp",
           "--find-unused-parameters",  # a text-writing decoder leaves its image-position tables without gradient
           "--save-dir", str(folder / "ckpt"), "--no-epoch-checkpoints", "--disable-validation",
           "--tensorboard-logdir", str(folder / "tb"), "--log-format", "simple", "--log-interval", "1",
           "--num-workers", "0", "--seed", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", DRIVER_OUT=str(out))
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    return folder, data, ranks, log


@pytest.mark.slow
def test_two_ranks_train_on_different_samples(run):
    _, _, ranks, log = run
    assert [r["world_size"] for r in ranks] == [2, 2] and "num_updates=3" in log
    first, second = ([i for update in r["ids"] for i in update] for r in ranks)
    assert len(ranks[0]["ids"]) == len(ranks[1]["ids"]) == UPDATES
    assert len(first) == len(second) == UPDATES * BATCH
    assert not set(first) & set(second)  # no sample seen by both ranks
    assert sorted(first + second) == list(range(ROWS))  # together: the whole training set, once


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
def test_ranks_read_their_shard_of_fairseqs_batch_iterator(run):
    """The ids each rank trained on are exactly its shard of `get_batch_iterator(num_shards=2, shard_id=r)`."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    _, data, ranks, _ = run
    argv = [data, "--user-dir", USER_DIR, "--task", "vqa_gen", *TINY, *TASKS["vqa_gen"][0], "--batch-size",
            str(BATCH), "--seed", "1", "--cpu"]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train", epoch=1)
    for rank in ranks:
        iterator = task.get_batch_iterator(
            dataset=task.dataset("train"), max_sentences=BATCH, ignore_invalid_inputs=True,
            required_batch_size_multiple=cfg.dataset.required_batch_size_multiple, seed=cfg.common.seed,
            num_shards=2, shard_id=rank["rank"], epoch=1)
        batches = [sorted(int(i) for i in batch["id"]) for batch in iterator.next_epoch_itr(shuffle=True)]
        assert batches == rank["ids"], rank["rank"]


@pytest.mark.slow
def test_ranks_end_with_identical_parameters_equal_to_the_checkpoint(run):
    from fairseq import checkpoint_utils

    folder, _, ranks, _ = run
    first, second = ranks[0]["tensors"], ranks[1]["tensors"]
    parameters = set(ranks[0]["parameters"])
    assert parameters and {n for n in parameters if first[n] != second[n]} == set()
    # Buffers: only BatchNorm running statistics differ. fairseq's DDP does not broadcast buffers
    # (--broadcast-buffers is off), so each rank averages its own batches, as in the reference; rank 0 saves.
    different = {n for n in first if first[n] != second[n]}
    assert all(n.endswith((".running_mean", ".running_var")) for n in different), sorted(different)[:5]
    state = checkpoint_utils.load_checkpoint_to_cpu(str(folder / "ckpt" / "checkpoint_last.pt"))
    assert state["optimizer_history"][-1]["num_updates"] == UPDATES
    assert digests(state["model"]) == first


@pytest.mark.slow
def test_tensorboard_events_hold_the_training_loss(run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, _, _, _ = run
    events = EventAccumulator(str(folder / "tb" / "train_inner"))
    events.Reload()
    losses = events.Scalars("loss")
    assert [e.step for e in losses] == [1, 2, 3]
    assert all(0 < e.value < 100 and torch.isfinite(torch.tensor(e.value)) for e in losses)
    assert not (folder / "tb" / "valid").exists()  # --disable-validation
