"""Negative examples for pretraining's image-text matching: wrong answers by answer type, captions with a
swapped object, random other captions.

`--neg-sample-dir` may hold the reference's files (`type2ans.json`: answer type -> answers, `object.txt`: one
object name per line, `all_captions.txt`: one caption per line). Each file is optional: whatever is missing is
derived from the training rows themselves (all answers as one type, the `gt_objects` names, the captions), so a
user never needs files the reference demanded but did not ship.
"""
import json
import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from .answers import parse_answer_confidences

logger = logging.getLogger(__name__)

ANY_TYPE = "other"
OBJECT_SWAP_PROBABILITY = 0.4


def _pick_other(values: Sequence[str], avoid: str, rng: np.random.Generator) -> Optional[str]:
    """A random element of `values` different from `avoid` (None if there is none)."""
    candidates = [v for v in values if v != avoid]
    return candidates[int(rng.integers(len(candidates)))] if candidates else None


class NegativeSamples:
    def __init__(self, type2ans: Dict[str, List[str]], objects: List[str], captions: List[str]):
        self.type2ans = {kind: sorted(set(answers)) for kind, answers in type2ans.items() if answers}
        self.ans2type = {answer: kind for kind, answers in self.type2ans.items() for answer in answers}
        self.all_answers = sorted(self.ans2type)
        self.objects = sorted(set(objects))
        self.captions = sorted(set(captions))

    @classmethod
    def load(cls, folder: Optional[str], rows: Iterable[Sequence[str]]) -> "NegativeSamples":
        """Files of `folder` where present; the rest derived from vision-language `rows`
        (`uniq_id, image, caption, question, refs, gt_objects, dataset_name, type`)."""
        def path(name):
            return os.path.join(folder, name) if folder and os.path.isfile(os.path.join(folder, name)) else None

        def lines(name):
            with open(path(name), encoding="utf-8") as handle:
                return [line.strip() for line in handle if line.strip()]

        type2ans = objects = captions = None
        if path("type2ans.json"):
            with open(path("type2ans.json"), encoding="utf-8") as handle:
                type2ans = json.load(handle)
        if path("object.txt"):
            objects = lines("object.txt")
        if path("all_captions.txt"):
            captions = lines("all_captions.txt")
        if type2ans is None or objects is None or captions is None:
            derived = cls.derive(rows)
            missing = [name for name, value in (("type2ans.json", type2ans), ("object.txt", objects),
                                                ("all_captions.txt", captions)) if value is None]
            logger.info(f"negative samples: {', '.join(missing)} derived from the training data "
                        f"(--neg-sample-dir {folder or 'not given'})")
            type2ans = derived.type2ans if type2ans is None else type2ans
            objects = derived.objects if objects is None else objects
            captions = derived.captions if captions is None else captions
        return cls(type2ans, objects, captions)

    @classmethod
    def derive(cls, rows: Iterable[Sequence[str]]) -> "NegativeSamples":
        answers, objects, captions = set(), set(), set()
        for fields in rows:
            kind = fields[7].strip() if len(fields) > 7 else ""
            if kind == "qa":
                try:
                    answers.update(parse_answer_confidences(fields[4]))
                except ValueError:
                    pass  # the row itself reports the problem when it is read
            elif kind == "caption" and fields[2].strip():
                captions.add(fields[2].strip())
            if len(fields) > 5:
                objects.update(o.strip() for o in fields[5].split("&&") if o.strip())
        return cls({ANY_TYPE: sorted(answers)}, sorted(objects), sorted(captions))

    def negative_answer(self, answer: str, rng: np.random.Generator) -> Optional[str]:
        """Another answer of the same type (any other answer if the type has none)."""
        same_type = self.type2ans.get(self.ans2type.get(answer, ""), [])
        return _pick_other(same_type, answer, rng) or _pick_other(self.all_answers, answer, rng)

    def negative_caption(self, caption: str, gt_objects: List[str], rng: np.random.Generator) -> Optional[str]:
        """With probability 0.4 (when the caption names one of its objects) that object swapped for another,
        else a random other caption."""
        named = [o for o in gt_objects if o and o in caption]
        if named and rng.random() < OBJECT_SWAP_PROBABILITY:
            gt_object = named[int(rng.integers(len(named)))]
            other = _pick_other(self.objects, gt_object, rng)
            if other is not None:
                return caption.replace(gt_object, other)
        return _pick_other(self.captions, caption, rng)
