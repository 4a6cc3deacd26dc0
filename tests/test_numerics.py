"""Numerics on CPU: bf16 training, fp16/bf16 attention and layer norms with large values, deterministic runs.

* `fairseq-train --bf16 --cpu` (the plugin stops `--bf16` from implying `--tpu`) trains the tiny model on a
  learnable toy task (MedNLI-like rows of tests/synthetic.py, a 54-symbol vocabulary so that an update takes
  ~0.1 s): every logged loss is finite, so are the weights, the loss falls, and the mean of the
  last 20 losses is within 10% of the same run in fp32. CI runs `BIOMEDGPT_NUMERICS_UPDATES` updates
  (default 120); `bench/reliability_numerics.py` runs 400.
* fp16 on CUDA cannot run on this machine (no GPU); stock fairseq's `--fp16 --cpu` stops in `FP16Optimizer`
  ("Found no NVIDIA driver"). What fp16 overflows in the reference (attention logits with large position biases,
  FFN layer norms) is checked on the modules directly, in fp16 and bf16 on CPU.
* Determinism: two fp32 CPU runs with the same seed give bit-identical checkpoints and identical logged losses.
"""
import copy
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from synthetic import nli_rows, write_task_data
from test_tasks_e2e import TINY

from biomedgpt.models import attention as attention_module
from biomedgpt.models.attention import OFAAttention

USER_DIR = os.path.dirname(__import__("biomedgpt").__file__)
UPDATES = int(os.environ.get("BIOMEDGPT_NUMERICS_UPDATES", "120"))
LAST = 20  # losses averaged at the end of the curve
TOLERANCE = 0.10  # |mean last 20 (bf16) - mean last 20 (fp32)| / mean last 20 (fp32)
TRAIN_LINE = re.compile(r"\| train_inner \|.*? loss=([^,]+),.*? num_updates=(\d+)")


# ---------------------------------------------------------------------------------------------- modules
def attention_inputs(dtype, seed=0, bias_scale=3e4, input_scale=1.0):
    torch.manual_seed(seed)
    module = OFAAttention(64, 4, self_attention=True).eval()
    x = torch.randn(10, 2, 64) * input_scale
    bias = torch.randn(2, 4, 10, 10) * bias_scale  # entries reach ~1e5: beyond fp16's 65504
    padding = torch.zeros(2, 10, dtype=torch.bool)
    padding[1, -3:] = True
    return module, x, bias, padding


@pytest.fixture
def impl():
    saved = attention_module.get_attention_impl()
    yield attention_module.set_attention_impl
    attention_module.set_attention_impl(saved)


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_with_biases_beyond_fp16_range_stays_finite(impl, kernel, dtype):
    """A bias that overflowed to +inf made whole softmax rows NaN in fp16 (both kernels, before the fix)."""
    module, x, bias, padding = attention_inputs(dtype)
    assert (bias.abs() > torch.finfo(torch.float16).max).any()
    impl(kernel)
    with torch.no_grad():
        out, _ = copy.deepcopy(module).to(dtype)(x.to(dtype), x.to(dtype), x.to(dtype), key_padding_mask=padding,
                                                  attn_bias=bias.to(dtype))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("kernel", ["sdpa", "eager"])
@pytest.mark.parametrize("dtype, atol", [(torch.float16, 0.02), (torch.bfloat16, 0.1)])
def test_attention_logits_plus_bias_overflowing_fp16_match_fp32(impl, kernel, dtype, atol):
    """A bias of 65000 on the first key (representable in fp16) plus q.k logits of up to ~900 exceeds 65504: summed
    in fp16 that is +inf and the row's softmax NaN (the eager kernel before the fix); summed in fp32 the first key
    takes all the weight, as in the fp32 reference."""
    module, x, _, padding = attention_inputs(dtype)
    x = x * 30
    bias = torch.zeros(2, 4, 10, 10)
    bias[..., 0] = 65000.0
    with torch.no_grad():
        q, k = module._heads(module.q_proj(x) * module.scaling), module._heads(module.k_proj(x))
        assert (torch.matmul(q, k.transpose(-1, -2)) + bias).max() > torch.finfo(torch.float16).max
        impl("eager")
        reference, _ = module(x, x, x, key_padding_mask=padding, attn_bias=bias)
        impl(kernel)
        out, _ = copy.deepcopy(module).to(dtype)(x.to(dtype), x.to(dtype), x.to(dtype), key_padding_mask=padding,
                                                  attn_bias=bias.to(dtype))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float() / reference.abs().max(), reference / reference.abs().max(), atol=atol,
                               rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_eager_attention_softmax_runs_in_fp32(impl, dtype, monkeypatch):
    module, x, bias, padding = attention_inputs(dtype, bias_scale=10.0)
    seen = []
    softmax = torch.softmax

    def recording(tensor, *args, **kwargs):
        seen.append(tensor.dtype)
        return softmax(tensor, *args, **kwargs)

    impl("eager")
    monkeypatch.setattr(torch, "softmax", recording)
    with torch.no_grad():
        out, weights = copy.deepcopy(module).to(dtype)(x.to(dtype), x.to(dtype), x.to(dtype), need_weights=True,
                                                        key_padding_mask=padding, attn_bias=bias.to(dtype))
    assert seen == [torch.float32] and out.dtype == dtype and weights.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_ffn_layer_norm_with_activations_whose_squares_overflow_fp16(dtype):
    """fairseq's LayerNorm (the FFN / attention layer norms of --scale-fc / --scale-attn) on CPU accumulates the
    variance in fp32: activations ~3000 (squares ~1e7 > 65504) normalise to the fp32 result."""
    from fairseq.modules import LayerNorm

    torch.manual_seed(0)
    norm = LayerNorm(128)
    x = torch.randn(4, 7, 128) * 1000 + 3000
    reference = norm(x)
    out = copy.deepcopy(norm).to(dtype)(x.to(dtype))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=0.05 if dtype == torch.float16 else 0.1, rtol=0)


def test_tiny_model_forward_in_bf16_and_under_bf16_autocast():
    from conftest import BIOMEDGPT_FLAGS, build  # noqa: F401  (the reference's scale-attn / scale-fc flags)

    torch.manual_seed(0)
    model, _, _ = build("ofa_tiny", ["--encoder-layers=1", "--decoder-layers=1", "--encoder-embed-dim=64",
                                     "--decoder-embed-dim=64", "--encoder-ffn-embed-dim=128",
                                     "--decoder-ffn-embed-dim=128", "--encoder-attention-heads=2",
                                     "--decoder-attention-heads=2"])
    model.eval()
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, 50000, (2, 6), generator=g)
    src[:, 0], src[:, -1] = 0, 2
    batch = {"src_tokens": src, "src_lengths": torch.tensor([6, 6]),
             "prev_output_tokens": torch.randint(4, 50000, (2, 5), generator=g),
             "patch_images": torch.randn(2, 3, 32, 32, generator=g), "patch_masks": torch.tensor([True, True])}
    with torch.no_grad():
        reference = model(**batch)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(**batch)[0]
        half = copy.deepcopy(model).to(torch.bfloat16)
        bf16 = half(**{k: (v.to(torch.bfloat16) if v.is_floating_point() else v) for k, v in batch.items()})[0]
    for out in (autocast, bf16):
        assert torch.isfinite(out).all()
        probs, ref_probs = out.float().softmax(-1), reference.softmax(-1)
        assert (probs - ref_probs).abs().sum(-1).max() < 0.1  # total variation between the distributions


# ---------------------------------------------------------------------------------------------- training runs
def small_bpe_dir(folder) -> str:
    """GPT-2 BPE files with a dict.txt of only the GPT-2 ids the toy task uses (54 OFA symbols with 16 codes and
    16 bins): the output layer is tiny, so hundreds of updates fit in CI."""
    from biomedgpt.data.bpe import build_bpe
    from biomedgpt.data.datasets.nli import PROMPT
    from biomedgpt.data.dictionary import PACKAGED_BPE_DIR

    bpe = build_bpe(PACKAGED_BPE_DIR)
    texts = [PROMPT.format(a.lower(), b.lower()) for a, b, _ in nli_rows(48)] + [" yes", " no", " maybe"]
    symbols = list(dict.fromkeys(s for text in texts for s in bpe.encode(text).split()))
    out = os.path.join(str(folder), "bpe")
    os.makedirs(out)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copy(os.path.join(PACKAGED_BPE_DIR, name), out)
    with open(os.path.join(out, "dict.txt"), "w") as handle:
        handle.writelines(f"{symbol} 1\n" for symbol in symbols)
    return out


def train_command(data, bpe_dir, save_dir, updates, *extra, seed=1):
    return [sys.executable, "-m", "fairseq_cli.train", data, "--user-dir", USER_DIR, "--task", "mnli", *TINY,
            "--selected-cols", "0,1,2", "--prompt-type", "src", "--bpe-dir", bpe_dir, "--code-dict-size", "16",
            "--num-bins", "16", "--criterion", "adjust_label_smoothed_cross_entropy", "--label-smoothing", "0.1",
            "--dropout", "0.1", "--optimizer", "adam", "--lr", "2e-3", "--batch-size", "8", "--cpu",
            "--max-update", str(updates), "--save-dir", str(save_dir), "--no-epoch-checkpoints",
            "--disable-validation", "--log-format", "simple", "--log-interval", "1", "--num-workers", "0",
            "--seed", str(seed), *extra]


def curve(log, updates):
    found = {int(u): loss for loss, u in TRAIN_LINE.findall(log)}
    assert sorted(found) == list(range(1, updates + 1)), log[-3000:]
    return [float(found[u]) for u in range(1, updates + 1)]


def run_all(commands):
    """Run the commands two at a time; returns their logs (asserting success)."""
    import concurrent.futures

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")

    def run(cmd):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-4000:]
        return log

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(run, commands))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """fp32 twice and bf16 once, same seed: {name: (losses, checkpoint state)}."""
    from fairseq import checkpoint_utils

    folder = tmp_path_factory.mktemp("numerics")
    data = write_task_data(str(folder), "mnli", train=48, valid=6)
    bpe_dir = small_bpe_dir(folder)
    names = {"fp32": [], "fp32_again": [], "bf16": ["--bf16"]}
    logs = run_all([train_command(data, bpe_dir, folder / name, UPDATES, *extra) for name, extra in names.items()])
    yield {name: (curve(log, UPDATES),
                  checkpoint_utils.load_checkpoint_to_cpu(str(folder / name / "checkpoint_last.pt")), log)
           for name, log in zip(names, logs)}
    shutil.rmtree(folder, ignore_errors=True)


def mean(values):
    return sum(values) / len(values)


@pytest.mark.slow
def test_bf16_cpu_training_is_finite_learns_and_tracks_fp32(runs):
    fp32, _, _ = runs["fp32"]
    bf16, state, log = runs["bf16"]
    assert "'bf16': True" in log and "'tpu': False" in log
    assert all(math.isfinite(loss) for loss in bf16)
    assert bf16 != fp32  # the model really ran in bf16 (fairseq saves its weights as fp32)
    weights = state["model"]
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    for losses in (fp32, bf16):
        assert mean(losses[-LAST:]) < 0.6 * mean(losses[:5]), losses  # it learns the toy task
    gap = abs(mean(bf16[-LAST:]) - mean(fp32[-LAST:])) / mean(fp32[-LAST:])
    assert gap <= TOLERANCE, (gap, mean(bf16[-LAST:]), mean(fp32[-LAST:]))
    assert abs(bf16[-1] - fp32[-1]) / fp32[-1] <= TOLERANCE


@pytest.mark.slow
def test_two_fp32_runs_with_the_same_seed_are_bit_identical(runs):
    first, first_state, _ = runs["fp32"]
    again, again_state, _ = runs["fp32_again"]
    assert first == again
    a, b = first_state["model"], again_state["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert first_state["optimizer_history"][-1]["num_updates"] == UPDATES
