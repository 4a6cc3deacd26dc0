"""Shared test fixtures: tiny-model builders and the reference parity fixtures in ../shared/spec."""
import importlib.util
import os
import shutil

import pytest
import torch

import biomedgpt  # noqa: F401  (registers the plugin before fairseq parses anything)

SPEC_DIR = os.environ.get("BIOMEDGPT_SPEC_DIR", os.path.join(os.path.dirname(__file__), "..", "..", "shared", "spec"))
STATE_DICT_DIR = os.path.join(SPEC_DIR, "state_dict")
BIOMEDGPT_FLAGS = [
    "--encoder-normalize-before", "--decoder-normalize-before", "--share-decoder-input-output-embed",
    "--share-all-embeddings", "--layernorm-embedding", "--patch-layernorm-embedding", "--code-layernorm-embedding",
    "--add-type-embedding", "--scale-attn", "--scale-fc", "--scale-heads", "--disable-entangle", "--num-bins=1000",
]

torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def _remove_module_files(tmp_path_factory):
    """Delete every folder a test module created under pytest's base temp once the module is done.

    Checkpoints of even `ofa_tiny` are ~200 MB and pytest otherwise keeps every folder of the session (and of
    the two sessions before), which filled CI's disk. Set BIOMEDGPT_KEEP_TEST_FILES=1 to keep them for debugging.
    """
    base = tmp_path_factory.getbasetemp()
    before = set(os.listdir(base))
    yield
    if os.environ.get("BIOMEDGPT_KEEP_TEST_FILES") == "1":
        return
    for name in set(os.listdir(base)) - before:
        shutil.rmtree(base / name, ignore_errors=True)


def require_spec(*names):
    """Skip (with the reason) when the reference fixtures folder is not present."""
    for name in names:
        path = os.path.join(STATE_DICT_DIR, name)
        if not os.path.exists(path):
            pytest.skip(f"reference fixture {path} not found (set BIOMEDGPT_SPEC_DIR to the shared/spec folder)")
    return STATE_DICT_DIR


def load_fill_rule():
    """The reference's deterministic weight fill (`fill_rule.py`, implementation-independent)."""
    folder = require_spec("fill_rule.py")
    spec = importlib.util.spec_from_file_location("ofa_fill_rule", os.path.join(folder, "fill_rule.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(arch="ofa_tiny", extra=(), data="DATA", task="ofa"):
    """Build a model and task exactly as `fairseq-train --task TASK --arch ARCH` would."""
    from biomedgpt.cli.model_check import build_from_argv

    return build_from_argv([data, f"--task={task}", f"--arch={arch}", *BIOMEDGPT_FLAGS, *extra])
