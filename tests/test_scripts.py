"""scripts/{finetune,evaluate,pretrain}/*.sh: the printed commands (`--dry-run`) are complete, resolved and parse
with fairseq's own parsers; and one script per task type fine-tunes a tiny model on CPU and is evaluated."""
import ast
import os
import re
import shlex
import subprocess
import sys

import pytest

from synthetic import write_task_data
from test_tasks_e2e import TINY

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
USER_DIR = os.path.dirname(__import__("biomedgpt").__file__)
COLOURS = '{"red": 0, "green": 1, "blue": 2}'

# script -> (task, default DATA relative to ROOT, evaluation scorer, default test file relative to ROOT)
FINETUNE = {
    "vqa_rad": ("vqa_gen", "data/vqa_rad/train.tsv,data/vqa_rad/val.tsv", "vqa_accuracy", "data/vqa_rad/test.tsv"),
    "slake": ("vqa_gen", "data/slake/train.tsv,data/slake/val.tsv", "vqa_accuracy", "data/slake/test.tsv"),
    "pathvqa": ("vqa_gen", "data/pathvqa/train.tsv,data/pathvqa/val.tsv", "vqa_accuracy", "data/pathvqa/test.tsv"),
    "peir_gross": ("caption", "data/peir_gross/peir_gross_train.tsv,data/peir_gross/peir_gross_val.tsv", "cider",
                   "data/peir_gross/peir_gross_test.tsv"),
    "iu_xray": ("caption", "data/iu_xray/iu_xray_train.tsv,data/iu_xray/iu_xray_val.tsv", "cider",
                "data/iu_xray/iu_xray_test.tsv"),
    "roco": ("caption", "data/roco/roco_train.tsv,data/roco/roco_val.tsv", "cider", "data/roco/roco_test.tsv"),
    "medmnist": ("image_classify", "data/medmnist/bloodmnist_train.tsv,data/medmnist/bloodmnist_val.tsv", "accuracy",
                 "data/medmnist/bloodmnist_test.tsv"),
    "meqsum": ("gigaword", "data/meqsum/train.tsv,data/meqsum/val.tsv", "rouge", "data/meqsum/test.tsv"),
    "mednli": ("mnli", "data/mednli/mednli_train.tsv,data/mednli/mednli_val.tsv", "accuracy",
               "data/mednli/mednli_test.tsv"),
}
# Flags of every BiomedGPT fine-tuning script (REFERENCE §7), with the scheduler under its plugin name.
COMMON = ["--encoder-normalize-before", "--decoder-normalize-before", "--share-decoder-input-output-embed",
          "--share-all-embeddings", "--layernorm-embedding", "--patch-layernorm-embedding",
          "--code-layernorm-embedding", "--add-type-embedding", "--scale-attn", "--scale-fc", "--scale-heads",
          "--disable-entangle", "--warmup-ratio", "--max-epoch", "--clip-norm", "--label-smoothing",
          "--fixed-validation-seed"]
VALUES = {"--lr-scheduler": "polynomial_decay_ratio", "--criterion": "adjust_label_smoothed_cross_entropy",
          "--optimizer": "adam", "--num-bins": "1000", "--arch": "ofa_tiny", "--num-workers": "0"}


def script_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "DRY_RUN", "VIRTUAL_ENV")}
    env.update(PYTHON=sys.executable, USER_DIR=USER_DIR, NGPUS="0", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def run_script(path, *args, cwd, check=True, **env):
    result = subprocess.run([os.path.join(SCRIPTS, path), *args], capture_output=True, text=True, cwd=cwd,
                            env=script_env(**env), timeout=600)
    if check:
        assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def dry_run(path, *args, cwd, **env):
    """The command a script would run, as argv (it prints exactly one shell-quoted line)."""
    out = run_script(path, "--dry-run", *args, cwd=cwd, **env).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return shlex.split(lines[0])


def option(argv, name):
    """The value of the last `name VALUE` in argv (argparse keeps the last)."""
    positions = [i for i, arg in enumerate(argv) if arg == name]
    assert positions, f"{name} missing from {argv}"
    return argv[positions[-1] + 1]


def assert_resolved(argv):
    for arg in argv:
        assert arg and "$" not in arg and "{total_num_updates}" not in arg, f"unresolved argument {arg!r} in {argv}"


# ------------------------------------------------------------------ --dry-run: printed commands
@pytest.mark.parametrize("name", list(FINETUNE))
def test_finetune_dry_run_prints_a_complete_resolved_command(name, tmp_path):
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    task, data, _, _ = FINETUNE[name]
    argv = dry_run(f"finetune/{name}.sh", cwd=tmp_path)  # from another working directory
    assert_resolved(argv)
    assert argv[0] == os.path.join(os.path.dirname(sys.executable), "fairseq-train")
    assert argv[1] == ",".join(os.path.join(ROOT, p) for p in data.split(","))
    assert option(argv, "--task") == task and option(argv, "--user-dir") == USER_DIR
    for flag in COMMON:
        assert flag in argv, flag
    for flag, value in VALUES.items():
        assert option(argv, flag) == value, flag
    assert option(argv, "--save-dir") == os.path.join(ROOT, "runs", "finetune", name,
                                                      *(["bloodmnist"] if name == "medmnist" else []), "ofa_tiny")
    assert "--max-update" not in argv and "--total-num-update" not in argv  # the schedule comes from --max-epoch
    assert "--restore-file" not in argv and "--finetune-from-model" not in argv  # RESTORE empty: from scratch
    assert "--cpu" in argv and "--fp16" not in argv and option(argv, "--distributed-world-size") == "1"
    if "--ans2label-file" in argv:
        assert option(argv, "--ans2label-file").startswith(os.path.join(ROOT, "data", ""))
    if "--eval-cider-cached-tokens" in argv:
        pytest.fail("the CIDEr document-frequency file is optional and absent here")

    # every flag is accepted by fairseq-train's own parser with the plugin, and lands in the config
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), input_args=argv[1:]))
    assert cfg.task._name == task and cfg.lr_scheduler._name == "polynomial_decay_ratio"
    assert cfg.lr_scheduler.warmup_ratio > 0 and cfg.optimization.max_epoch > 0 and cfg.common.cpu


def test_finetune_variables_restore_and_passthrough(tmp_path):
    argv = dry_run("finetune/mednli.sh", "--", "--max-epoch", "3", "--encoder-layers", "1", cwd=tmp_path,
                   RESTORE="/ckpt/biomedgpt tiny.pt", ARCH="ofa_base", DATA_DIR="/d", SAVE_DIR="/s", LR="1e-4",
                   BPE_DIR="/bpe", TENSORBOARD_DIR="/tb")
    assert option(argv, "--finetune-from-model") == "/ckpt/biomedgpt tiny.pt"  # resumable: later runs continue
    assert argv[1] == "/d/mednli_train.tsv,/d/mednli_val.tsv" and option(argv, "--save-dir") == "/s"
    assert option(argv, "--arch") == "ofa_base" and option(argv, "--batch-size") == "16"  # the reference's base size
    assert option(argv, "--lr") == "1e-4" and option(argv, "--bpe-dir") == "/bpe"
    assert option(argv, "--tensorboard-logdir") == "/tb"
    assert argv[-4:] == ["--max-epoch", "3", "--encoder-layers", "1"] and option(argv, "--max-epoch") == "3"
    assert dry_run("finetune/mednli.sh", cwd=tmp_path) == run_and_split("finetune/mednli.sh", tmp_path, DRY_RUN="1")


def run_and_split(path, cwd, **env):
    return shlex.split(run_script(path, cwd=cwd, **env).stdout)


def test_launcher_choice(tmp_path):
    one_gpu = dry_run("finetune/vqa_rad.sh", cwd=tmp_path, NGPUS="1")
    assert one_gpu[0].endswith("/fairseq-train") and "--fp16" in one_gpu and "--cpu" not in one_gpu
    assert option(one_gpu, "--distributed-world-size") == "1"

    four = dry_run("finetune/vqa_rad.sh", cwd=tmp_path, NGPUS="4", PRECISION="bf16")
    assert four[0].endswith("/torchrun") and four[1:4] == ["--standalone", "--nproc_per_node", "4"]
    assert four[4].endswith("/fairseq-train")
    assert option(four, "--distributed-world-size") == "4" and "--bf16" in four and "--fp16" not in four
    assert "--distributed-backend" not in four  # nccl, fairseq's default on GPUs
    assert "--find-unused-parameters" in four and "--find-unused-parameters" not in one_gpu  # see test_distributed

    nodes = dry_run("finetune/vqa_rad.sh", cwd=tmp_path, NGPUS="8", NNODES="2", NODE_RANK="1",
                    MASTER_ADDR="10.0.0.1", MASTER_PORT="1234")
    assert [option(nodes, f) for f in ("--nnodes", "--node_rank", "--master_addr", "--master_port")] == [
        "2", "1", "10.0.0.1", "1234"]
    assert option(nodes, "--distributed-world-size") == "16" and "--standalone" not in nodes
    assert nodes[nodes.index("--master_port") + 2].endswith("/fairseq-train")

    cpu_workers = dry_run("finetune/vqa_rad.sh", cwd=tmp_path, NPROC_PER_NODE="2")
    assert cpu_workers[0].endswith("/torchrun") and option(cpu_workers, "--distributed-backend") == "gloo"
    assert "--cpu" in cpu_workers and option(cpu_workers, "--distributed-world-size") == "2"

    refused = run_script("finetune/vqa_rad.sh", "--dry-run", cwd=tmp_path, check=False, PRECISION="fp16")
    assert refused.returncode == 2 and "PRECISION=fp16 needs a GPU" in refused.stderr


def test_user_dir_from_the_installed_package(tmp_path):
    from biomedgpt.userdir import USER_DIR as printed  # what `python -m biomedgpt.userdir` prints

    argv = dry_run("evaluate/mednli.sh", cwd=tmp_path, USER_DIR=None)
    assert option(argv, "--user-dir") == printed == USER_DIR
    missing = run_script("evaluate/mednli.sh", "--dry-run", cwd=tmp_path, check=False, USER_DIR=None,
                         PYTHON="/usr/bin/python3")  # a python without biomedgpt
    assert missing.returncode == 2 and "biomedgpt is not installed" in missing.stderr


def test_help(tmp_path):
    result = run_script("finetune/vqa_rad.sh", "--help", cwd=tmp_path)
    assert "Usage: scripts/finetune/vqa_rad.sh" in result.stdout and "set -euo" not in result.stdout


@pytest.mark.parametrize("name", list(FINETUNE))
def test_evaluate_dry_run(name, tmp_path):
    from fairseq import options

    task, _, scorer, test_file = FINETUNE[name]
    argv = dry_run(f"evaluate/{name}.sh", cwd=tmp_path)
    assert_resolved(argv)
    assert argv[0] == os.path.join(os.path.dirname(sys.executable), "fairseq-generate")
    assert argv[1] == os.path.join(ROOT, test_file)
    assert option(argv, "--task") == task and option(argv, "--scoring") == scorer
    # the checkpoint of the matching fine-tuning script (same folder names: no VQA-RAD / vqa-rad mismatch)
    save_dir = dry_run(f"finetune/{name}.sh", cwd=tmp_path)
    assert option(argv, "--path") == os.path.join(option(save_dir, "--save-dir"), "checkpoint_best.pt")
    overrides = ast.literal_eval(option(argv, "--model-overrides"))
    assert overrides["data"] == argv[1] and overrides["bpe_dir"] is None
    assert overrides["selected_cols"] == option(save_dir, "--selected-cols")
    assert "ans2label_file" not in overrides  # no answer file in DATA_DIR: the checkpoint's answer set
    if task == "caption":  # validation CIDEr settings (and their file) are not needed to evaluate
        assert overrides["eval_cider"] is False and overrides["eval_cider_cached_tokens"] is None
    if task == "vqa_gen":
        assert overrides["ema_eval"] is True and overrides["val_inference_type"] == "beamsearch"
        assert option(argv, "--beam") == "1"  # the reference's ${beam_size} was undefined
    args = options.parse_args_and_arch(options.get_generation_parser(), input_args=argv[1:])
    assert args.task == task and args.scoring == scorer and args.cpu


def test_evaluate_answer_set_from_the_data_folder(tmp_path):
    (tmp_path / "trainval_ans2label.pkl").write_bytes(b"")
    argv = dry_run("evaluate/vqa_rad.sh", cwd=tmp_path, DATA_DIR=str(tmp_path), INFERENCE="allcand", EMA_EVAL="0",
                   ZERO_SHOT="1")
    overrides = ast.literal_eval(option(argv, "--model-overrides"))
    assert overrides["ans2label_file"] == str(tmp_path / "trainval_ans2label.pkl")
    assert overrides["val_inference_type"] == "allcand" and "ema_eval" not in overrides and "--zero-shot" in argv


def test_pretrain_dry_run(tmp_path):
    argv = dry_run("pretrain/pretrain_tiny.sh", cwd=tmp_path)
    assert_resolved(argv)
    data = os.path.join(ROOT, "data", "pretrain")
    assert argv[1] == os.path.join(data, "vision_language.tsv") and option(argv, "--task") == "unify_task"
    expected = {"--selected-cols": "0,1,2,3,4,5,6,7", "--text-data": os.path.join(data, "text.tsv"),
                "--text-selected-cols": "0,1", "--image-data": os.path.join(data, "image.tsv"),
                "--image-selected-cols": "0,1,2", "--detection-data": os.path.join(data, "detection.tsv"),
                "--detection-selected-cols": "0,1,2", "--code-image-size": "128", "--mask-ratio": "0.3",
                "--max-image-size": "512", "--sample-patch-num": "196", "--label-smoothing": "0.0",
                "--warmup-ratio": "0.01", "--clip-norm": "5.0", "--lr-scheduler": "polynomial_decay_ratio",
                "--save-dir": os.path.join(ROOT, "runs", "pretrain", "ofa_tiny")}
    for flag, value in expected.items():
        assert option(argv, flag) == value, flag
    assert "--disable-validation" in argv and "--neg-sample-dir" not in argv  # optional now
    with_neg = dry_run("pretrain/pretrain_tiny.sh", cwd=tmp_path, NEG_SAMPLE_DIR="/neg", TEXT_DATA="")
    assert option(with_neg, "--neg-sample-dir") == "/neg" and "--text-data" not in with_neg


# ------------------------------------------------------------------ tiny runs on CPU: fine-tune, then evaluate
RUNS = {
    # script: (synthetic data of task, env, extra fairseq-train flags, extra fairseq-generate flags)
    "vqa_rad": ("vqa_gen", {"ANS2LABEL": "answers.json"}, [], []),
    "peir_gross": ("caption", {}, ["--eval-args", '{"beam": 2, "max_len_b": 6}'], ["--beam", "2", "--max-len-b", "6"]),
    "medmnist": ("image_classify", {"ANS2LABEL": "answers.json"}, [], []),
    "meqsum": ("gigaword", {}, ["--eval-args", '{"beam": 2, "max_len_b": 8}'], ["--beam", "2", "--max-len-b", "8"]),
    "mednli": ("mnli", {}, [], []),
}
SCORE_LINE = r"^Generate test with beam=\d+: (VQA accuracy|CIDEr|Accuracy|ROUGE-1 = [\d.]+, ROUGE-2 = [\d.]+, ROUGE-L) = [\d.]+"


def finetune_then_evaluate(name, folder):
    """Fine-tune for 2 updates with the script's flags (shrunk by pass-through flags), then run the evaluate
    script with its defaults for the checkpoint (SAVE_DIR/checkpoint_best.pt); the synthetic validation file
    stands in for the test file. Returns (checkpoint folder, evaluate stdout)."""
    data_task, env, train_extra, generate_extra = RUNS[name]
    train_file, valid_file = write_task_data(str(folder), data_task).split(",")
    (folder / "answers.json").write_text(COLOURS)
    env = {k: str(folder / v) for k, v in env.items()}
    save_dir = folder / "ckpt"
    common = dict(SAVE_DIR=str(save_dir), BATCH_SIZE="8", USER_DIR=None, **env)  # user dir found by the script
    run_script(f"finetune/{name}.sh", "--", *TINY, "--max-update", "2", *train_extra, cwd=folder, UPDATE_FREQ="1",
               DATA=f"{train_file},{valid_file}", **common)
    result = run_script(f"evaluate/{name}.sh", "--", *generate_extra, cwd=folder, DATA=valid_file, **common)
    return save_dir, result.stdout + "\n" + result.stderr


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The five pipelines run concurrently (each process is mostly single-threaded start-up)."""
    from concurrent.futures import ThreadPoolExecutor

    folders = {name: tmp_path_factory.mktemp(name) for name in RUNS}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {name: pool.submit(finetune_then_evaluate, name, folders[name]) for name in RUNS}
        return {name: future for name, future in futures.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_finetune_then_evaluate_tiny_on_cpu(name, tiny_runs):
    save_dir, log = tiny_runs[name].result()  # re-raises a failed run's assertion
    assert (save_dir / "checkpoint_best.pt").exists() and (save_dir / "checkpoint_last.pt").exists()
    assert re.search(SCORE_LINE, log, re.M), log[-3000:]
    assert len(re.findall(r"^D-\d+\t", log, re.M)) == 6  # every validation row was answered
