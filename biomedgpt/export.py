"""Exchange format for trained checkpoints: `model.safetensors` + `config.json`, and back to a fairseq checkpoint.

    export_checkpoint("runs/vqa/checkpoint_best.pt", "export/vqa")   # -> model.safetensors, config.json
    import_checkpoint("export/vqa", "vqa.pt")                         # -> a checkpoint for fairseq-generate --path
    model, task = load_exported("export/vqa")                         # -> the model, in Python

**Export** reads the checkpoint through fairseq's own loader as the plugin adjusts it (`biomedgpt.compat`: only
plain data is unpickled) and builds the model as `fairseq-generate` would, so the exported tensors are the
weights the model really runs with (legacy keys split, resized embeddings, filled missing keys).
`config.json` is plain JSON: the architecture and every model argument (`model`), the task name and its settings
(`task`), the criterion settings, the dictionary size and the tied-tensor map. Nothing outside the export folder
is needed to use it: a closed answer set read from `--ans2label-file` is written inline (`ans2label_dict`), a
custom `--bpe-dir` is copied into `bpe/`, and the validation-only CIDEr document-frequency file is dropped.

**Tied tensors.** With `--share-all-embeddings` the encoder and decoder embeddings and the output projection are
one tensor; safetensors refuses aliases, so each tensor is stored once, under its first state-dict name, and
`config.json["tied_weights"]` maps every other name to it. Import ties them again.

**Import** checks, before writing anything, that the tensors are exactly those of the model that `config.json`
describes (names and shapes, and the dictionary size); a mismatch raises `ExportMismatchError` naming them,
instead of fairseq silently resizing embeddings or filling missing tensors with fresh initial values.

This module must never change how checkpoints are read (that is `biomedgpt.compat`'s job) nor train anything.
"""
import argparse
import json
import math
import os
import shutil
import tempfile
from typing import Dict, Optional, Tuple

import torch

FORMAT = "biomedgpt-safetensors"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
BPE_FOLDER = "bpe"

__all__ = ["export_checkpoint", "import_checkpoint", "load_exported", "read_export", "ExportFormatError",
           "ExportMismatchError", "FORMAT", "WEIGHTS_FILE", "CONFIG_FILE"]


class ExportFormatError(ValueError):
    """The export folder is not in this format (missing files or fields, unknown version)."""


class ExportMismatchError(ValueError):
    """The tensors of `model.safetensors` are not those of the model described by `config.json`."""


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("exporting to / importing from safetensors needs the `safetensors` package "
                          "(pip install safetensors; it is a dependency of biomedgpt, so reinstall biomedgpt)") from None
    return safetensors.torch


# ------------------------------------------------------------------ JSON
def _jsonable(value, where: str):
    """`value` as plain JSON data; argparse values are str/int/float/bool/None/list (tuples become lists)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)  # fairseq's ChoiceEnum members are str subclasses
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return {"float": repr(value)}  # JSON has no inf/nan
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(f"cannot export {where} = {value!r} ({type(value).__name__}): not plain data")


def _from_json(value):
    if isinstance(value, dict):
        if set(value) == {"float"} and isinstance(value["float"], str):
            return float(value["float"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def _container(cfg) -> dict:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return dict(cfg)


# ------------------------------------------------------------------ tied tensors
def _untie(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors stored once, {alias: stored name}). Identical views of one storage are aliases; tensors that only
    overlap a storage are stored as contiguous copies."""
    stored, tied, seen, storages = {}, {}, {}, set()
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            raise ValueError(f"tensor {name} has no data (meta device)")
        view = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(),
                tensor.dtype)
        if tensor.numel() > 0 and view in seen:
            tied[name] = seen[view]
            continue
        seen[view] = name
        shares = tensor.numel() > 0 and view[0] in storages  # overlaps an earlier tensor without being it
        storages.add(view[0])
        stored[name] = tensor.clone().contiguous() if shares or not tensor.is_contiguous() else tensor
    return stored, tied


def _retie(tensors: Dict[str, torch.Tensor], tied: Dict[str, str], order) -> Dict[str, torch.Tensor]:
    state = {}
    for name in order:
        if name in tensors:
            state[name] = tensors[name]
        elif name in tied and tied[name] in tensors:
            state[name] = tensors[tied[name]]
        else:
            raise ExportFormatError(f"{name} is listed in {CONFIG_FILE} but neither stored nor tied to a stored tensor")
    return state


# ------------------------------------------------------------------ export
_FILE_SETTINGS = ("ans2label_dict", "ans2label_file", "bpe_dir", "eval_cider_cached_tokens")


def _self_contained_task(task_cfg: dict, output_dir: str) -> dict:
    """The task settings with their files folded into the export folder (answers inline, BPE files copied)."""
    from .data.answers import load_ans2label

    task_cfg = dict(task_cfg)
    if task_cfg.get("ans2label_file"):
        task_cfg["ans2label_dict"] = json.dumps(load_ans2label(task_cfg.get("ans2label_dict"),
                                                               task_cfg["ans2label_file"]))
        task_cfg["ans2label_file"] = None
    if task_cfg.get("bpe_dir"):
        target = os.path.join(output_dir, BPE_FOLDER)
        os.makedirs(target, exist_ok=True)
        for entry in os.scandir(task_cfg["bpe_dir"]):
            if entry.is_file():
                shutil.copy2(entry.path, os.path.join(target, entry.name))
        task_cfg["bpe_dir"] = BPE_FOLDER  # relative to the export folder
    if task_cfg.get("eval_cider_cached_tokens"):
        task_cfg["eval_cider_cached_tokens"] = None  # validation during training only
    return task_cfg


def export_checkpoint(checkpoint: str, output_dir: str, ema: bool = False, overrides: Optional[dict] = None,
                      overwrite: bool = False) -> Tuple[str, str]:
    """Write `model.safetensors` and `config.json` for a fairseq checkpoint; returns their paths.

    `ema=True` exports the EMA weights stored by `--store-ema`. `overrides` are fairseq `--model-overrides`
    (e.g. `{"ans2label_file": "answers.pkl"}` when the training machine's file is elsewhere)."""
    import biomedgpt  # noqa: F401  (registers the plugin and the checkpoint allow-list)
    from fairseq import checkpoint_utils

    weights_path, config_path = os.path.join(output_dir, WEIGHTS_FILE), os.path.join(output_dir, CONFIG_FILE)
    if not overwrite and (os.path.exists(weights_path) or os.path.exists(config_path)):
        raise FileExistsError(f"{output_dir} already holds an export (pass overwrite=True / --force to replace it)")
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")

    state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint, arg_overrides=overrides)
    if ema:
        from .ema_weights import use_ema_weights

        state = use_ema_weights(state, checkpoint)
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint], state=state)
    model_cfg = cfg.model
    if isinstance(model_cfg, argparse.Namespace):
        kind, model_dict = "namespace", dict(vars(model_cfg))
    else:
        kind, model_dict = "dataclass", _container(model_cfg)
    history = state.get("optimizer_history") or [{}]

    os.makedirs(output_dir, exist_ok=True)
    task_dict = _self_contained_task(_container(cfg.task), output_dir)
    for key in _FILE_SETTINGS:  # a Namespace model config holds the whole command line, task settings included
        if key in model_dict and key in task_dict:
            model_dict[key] = task_dict[key]
    stored, tied = _untie(models[0].state_dict())
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": model_dict.get("arch") or model_dict.get("_name"),
        "task_name": cfg.task._name,
        "dictionary_size": len(task.source_dictionary),
        "model_config_type": kind,
        "model": _jsonable(model_dict, "model"),
        "task": _jsonable(task_dict, "task"),
        "criterion": _jsonable(_container(cfg.criterion), "criterion") if cfg.get("criterion") else None,
        "tied_weights": tied,
        "tensor_order": list(models[0].state_dict()),
        "weights": "ema" if ema else "model",
        "num_updates": history[-1].get("num_updates", 0),
        "source_checkpoint": os.path.basename(checkpoint),
    }
    _safetensors().save_file(stored, weights_path, metadata={"format": "pt", "biomedgpt_format": FORMAT,
                                                              "arch": str(config["arch"])})
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(weights_path, 0o666 & ~umask)  # safetensors creates the file private (0600)
    with open(config_path, "w") as handle:
        json.dump(config, handle, indent=1, allow_nan=False)
        handle.write("\n")
    return weights_path, config_path


# ------------------------------------------------------------------ import
def _read_config(export_dir: str) -> dict:
    path = os.path.join(export_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ExportFormatError(f"{export_dir}: no {CONFIG_FILE} (not a biomedgpt export folder)")
    try:
        with open(path) as handle:
            config = json.load(handle)
    except json.JSONDecodeError as exc:
        raise ExportFormatError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ExportFormatError(f"{path}: not a {FORMAT} config (format {config.get('format')!r})"
                                if isinstance(config, dict) else f"{path}: not a JSON object")
    if config.get("format_version") != FORMAT_VERSION:
        raise ExportFormatError(f"{path}: format version {config.get('format_version')!r}, this biomedgpt reads "
                                f"version {FORMAT_VERSION}")
    missing = [k for k in ("task_name", "dictionary_size", "model_config_type", "model", "task", "tied_weights",
                           "tensor_order") if k not in config]
    if missing:
        raise ExportFormatError(f"{path}: missing field(s) {', '.join(missing)}")
    return config


def _cfg_groups(config: dict, export_dir: str) -> dict:
    """The checkpoint's `cfg` groups (as fairseq saves them) from `config.json`."""
    task = _from_json(config["task"])
    if task.get("bpe_dir") == BPE_FOLDER:
        task["bpe_dir"] = os.path.abspath(os.path.join(export_dir, BPE_FOLDER))
    model = _from_json(config["model"])
    if config["model_config_type"] == "namespace":
        model = argparse.Namespace(**model)
    criterion = _from_json(config.get("criterion") or {"_name": "cross_entropy"})
    return {"common": {}, "task": task, "model": model, "criterion": criterion}


def read_export(export_dir: str) -> Tuple[dict, Dict[str, torch.Tensor]]:
    """`(config, state_dict)` of an export folder: every tensor under every state-dict name (tied names share)."""
    config = _read_config(export_dir)
    weights = os.path.join(export_dir, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise ExportFormatError(f"{export_dir}: no {WEIGHTS_FILE}")
    tensors = _safetensors().load_file(weights)
    extra = sorted(set(tensors) - set(config["tensor_order"]))
    if extra:
        raise ExportMismatchError(f"{weights} holds {len(extra)} tensor(s) that {CONFIG_FILE} does not list, "
                                  f"e.g. {extra[0]}")
    return config, _retie(tensors, config["tied_weights"], config["tensor_order"])


def _build(config: dict, export_dir: str, state: Dict[str, torch.Tensor]):
    """Build the task and model that `config.json` describes and check `state` fits it exactly."""
    from omegaconf import OmegaConf
    from fairseq import tasks

    groups = _cfg_groups(config, export_dir)
    task = tasks.setup_task(OmegaConf.create(groups["task"]), from_checkpoint=True)
    if len(task.source_dictionary) != config["dictionary_size"]:
        raise ExportMismatchError(
            f"{CONFIG_FILE}: dictionary_size {config['dictionary_size']}, but its task settings build a dictionary "
            f"of {len(task.source_dictionary)} symbols (bpe_dir {groups['task'].get('bpe_dir') or 'packaged GPT-2'})")
    model = task.build_model(groups["model"])
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items()}
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    shapes = [f"{k}: file {list(given[k])}, config {list(expected[k])}" for k in expected
              if k in given and given[k] != expected[k]]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f"{len(missing)} tensor(s) the model needs are missing (e.g. {missing[0]})")
        if unexpected:
            problems.append(f"{len(unexpected)} tensor(s) the model does not have (e.g. {unexpected[0]})")
        if shapes:
            problems.append(f"{len(shapes)} tensor(s) of another shape (e.g. {shapes[0]})")
        raise ExportMismatchError(
            f"{os.path.join(export_dir, WEIGHTS_FILE)} does not fit the model of {CONFIG_FILE} "
            f"(arch {config.get('arch')}, task {config['task_name']}, {config['dictionary_size']} symbols): "
            + "; ".join(problems))
    return groups, task, model


def import_checkpoint(export_dir: str, output: str) -> str:
    """Write a fairseq checkpoint (for `fairseq-generate --path`, `biomedgpt.inference.load`, `--restore-file`)
    from an export folder; returns its path. Raises `ExportMismatchError` if weights and config disagree."""
    import biomedgpt  # noqa: F401

    config, state = read_export(export_dir)
    groups, _task, _model = _build(config, export_dir, state)
    checkpoint = {
        "args": None,
        "cfg": groups,
        "model": state,  # tied names share one tensor again, as in the checkpoint fairseq saved
        "criterion": None,
        "optimizer_history": [{"criterion_name": "AdjustLabelSmoothedCrossEntropyCriterion",
                               "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": None},
                               "num_updates": int(config.get("num_updates") or 0)}],
        "task_state": {},
        "extra_state": {"metrics": {}, "previous_training_time": 0.0,
                        "train_iterator": {"epoch": 1, "iterations_in_epoch": 0, "shuffle": True, "version": 2}},
        "last_optimizer_state": None,
    }
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".pt.tmp", delete=False) as handle:
        torch.save(checkpoint, handle)
    os.replace(handle.name, output)  # never a half-written checkpoint under the final name
    return output


def load_exported(export_dir: str, device: Optional[str] = None):
    """`(model, task)` from an export folder, in eval mode (weights checked against the config first)."""
    import biomedgpt  # noqa: F401

    config, state = read_export(export_dir)
    groups, task, model = _build(config, export_dir, state)
    model.load_state_dict(state, strict=True, model_cfg=groups["model"])
    if device is not None:
        model = model.to(device)
    return model.eval(), task
