"""Evaluate with the EMA weights a training run stored (`--store-ema`), as the reference's `--ema-eval` did.

Asked for through the checkpoint overrides, `--model-overrides "{'ema_eval': True}"`, so it works the same for
`fairseq-generate`, `fairseq-validate` and `biomedgpt.inference.load`. It only swaps tensors inside the loaded
checkpoint dict; it never changes how the file is read.
"""
import logging

logger = logging.getLogger(__name__)

EMA_OVERRIDE = "ema_eval"


class MissingEMAError(RuntimeError):
    """`ema_eval` was asked for, but the checkpoint holds no EMA weights."""


def wants_ema_weights(arg_overrides) -> bool:
    return bool(arg_overrides) and bool(arg_overrides.get(EMA_OVERRIDE, False))


def use_ema_weights(state: dict, path: str) -> dict:
    """Replace `state["model"]` by the EMA copy in `state["extra_state"]["ema"]` (fp32 copy preferred)."""
    extra = state.get("extra_state") or {}
    ema = extra.get("ema")
    if not ema:
        raise MissingEMAError(
            f"{path}: {EMA_OVERRIDE} asked for EMA weights, but the checkpoint has none "
            f"(train with --ema-alpha/--store-ema, or drop '{EMA_OVERRIDE}' from --model-overrides)")
    weights = dict(ema)
    for name, tensor in (extra.get("ema_fp32_params") or {}).items():
        if name in weights:
            weights[name] = tensor.to(weights[name].dtype)
    missing = sorted(set(state["model"]) - set(weights))
    if missing:
        raise MissingEMAError(f"{path}: the EMA weights lack {len(missing)} model tensors, e.g. {missing[0]}")
    state["model"] = weights
    logger.info(f"evaluating with the EMA weights stored in {path}")
    return state
