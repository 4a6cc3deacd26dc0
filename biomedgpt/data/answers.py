"""Closed answer sets: `ans2label` from an inline JSON dict, a JSON file or a pickle of a plain dict.

Pickles are read with an unpickler that refuses every global, so only plain data (dict, str, int, float)
can come out of them; nothing in the file is executed.
"""
import json
import math
import os
import pickle
from typing import Dict, Optional


class _DataOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: an answer file must be a plain dict")


def load_ans2label(inline: Optional[str], path: Optional[str]) -> Dict[str, int]:
    """`{answer: label}` from `--ans2label-file` (pickle or .json) if given, else the inline JSON dict."""
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--ans2label-file {path} not found")
        if path.endswith(".json"):
            with open(path) as handle:
                mapping = json.load(handle)
        else:
            with open(path, "rb") as handle:
                try:
                    mapping = _DataOnlyUnpickler(handle).load()
                except Exception as exc:
                    raise ValueError(f"--ans2label-file {path}: {exc}") from None
    else:
        try:
            mapping = json.loads(inline or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"--ans2label-dict is not valid JSON ({exc}): {inline!r}") from None
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"answer set ({path or '--ans2label-dict'}) must be a non-empty dict answer -> label")
    return {str(answer): label for answer, label in mapping.items()}


def parse_answer_confidences(text: str) -> Dict[str, float]:
    """`"1.0|!+yes&&0.3|!+no"` -> `{"yes": 1.0, "no": 0.3}` (the reference's VQA answer column)."""
    answers = {}
    for item in text.split("&&"):
        if not item.strip():
            continue
        conf, sep, answer = item.partition("|!+")
        if not sep:
            raise ValueError(f"answer {item!r} is not of the form 'confidence|!+answer'")
        value = float(conf)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"answer {item!r}: the confidence must be a finite number >= 0")
        if not answer.strip():
            raise ValueError(f"answer {item!r}: empty answer")
        answers[answer] = value
    if not answers:
        raise ValueError("no answer given")
    return answers
