"""Console entry points: the plugin-path helper and the end-to-end model check."""
import os
import subprocess
import sys

import pytest


def test_userdir_prints_an_importable_plugin_folder():
    out = subprocess.run([sys.executable, "-m", "biomedgpt.userdir"], capture_output=True, text=True, check=True)
    path = out.stdout.strip()
    assert os.path.isfile(os.path.join(path, "__init__.py"))
    assert os.path.basename(path) == "biomedgpt"

    from fairseq.models import ARCH_MODEL_REGISTRY
    from fairseq.tasks import TASK_REGISTRY
    from fairseq.utils import import_user_module
    from argparse import Namespace

    import_user_module(Namespace(user_dir=path))
    assert {"ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge"} <= set(ARCH_MODEL_REGISTRY)
    assert "ofa" in TASK_REGISTRY


@pytest.mark.slow
def test_model_check_runs_end_to_end(capsys):
    from biomedgpt.cli.model_check import main

    assert main(["--image-size", "64", "--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "33,488,336 parameters" in out
    assert "weights identical = True" in out
    assert "[4/4]" in out
