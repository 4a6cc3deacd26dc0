"""Ask a trained checkpoint about images without writing a dataset: `load(path)` -> `model.answer(image, question)`.

The task, answer set and image size come from the checkpoint (override them with `overrides`). Closed-answer
tasks (vqa_gen, image_classify) score every candidate answer; open tasks (caption, unconstrained VQA) decode
with beam search. Images may be file paths (PNG, JPEG, DICOM, any Pillow format), bytes or PIL images.
"""
import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from fairseq.data import data_utils

from .data.image import bytes_to_image, resize_transform
from .data.text import pre_question

CAPTION_PROMPT = " what does the image describe?"
ImageLike = Union[str, bytes, Image.Image]


def open_image(image: ImageLike) -> Image.Image:
    """RGB PIL image from a path, encoded bytes or a PIL image (DICOM included)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, str):
        with open(image, "rb") as handle:
            image = handle.read()
    return bytes_to_image(image)


class BiomedGPT:
    """A loaded checkpoint and its task, ready to answer questions about images."""

    def __init__(self, model, task, device: torch.device, beam: int = 5, max_len: int = 32):
        self.model, self.task, self.device = model, task, device
        self.text = task.text
        self.beam, self.max_len = beam, max_len
        cfg = task.cfg
        self.transform = resize_transform(cfg.patch_image_size, cfg.imagenet_default_mean_and_std)

    @classmethod
    def load(cls, path: str, overrides: Optional[dict] = None, device: Optional[str] = None,
             dtype: Optional[torch.dtype] = None, **kwargs):
        import biomedgpt  # noqa: F401  (registers the plugin and the checkpoint allow-list)
        from fairseq import checkpoint_utils

        models, _cfg, task = checkpoint_utils.load_model_ensemble_and_task([path], arg_overrides=overrides or {})
        target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = models[0].to(device=target, dtype=dtype).eval()  # images are cast to the model's dtype inside it
        return cls(model, task, target, **kwargs)

    # ------------------------------------------------------------------ batches
    def _source(self, question: Optional[str]) -> torch.Tensor:
        if question is None or self.task.cfg._name in ("caption", "image_classify"):
            text = CAPTION_PROMPT
        else:
            question = pre_question(question, self.task.cfg.max_src_length)
            text = " " + (question if question.endswith("?") else question + "?")
        return torch.cat([torch.tensor([self.text.bos]), self.text.encode(text), torch.tensor([self.text.eos])])

    def _prompt(self, src: torch.Tensor) -> torch.Tensor:
        prompt_type = getattr(self.task.cfg, "prompt_type", None)
        if prompt_type == "src":
            return src
        if prompt_type == "prev_output":
            return src[:-1]
        return torch.tensor([self.text.bos])

    def _batch(self, images: Sequence[ImageLike], questions: Sequence[Optional[str]]):
        sources = [self._source(q) for q in questions]
        prompts = [self._prompt(s) for s in sources]
        src_tokens = data_utils.collate_tokens(sources, self.text.pad)
        return {
            "net_input": {
                "src_tokens": src_tokens.to(self.device),
                "src_lengths": src_tokens.ne(self.text.pad).sum(1).to(self.device),
                "patch_images": torch.stack([self.transform(open_image(i)) for i in images]).to(self.device),
                "patch_masks": torch.ones(len(images), dtype=torch.bool, device=self.device),
            },
            "decoder_prompts": [p.tolist() for p in prompts],
            "prefix_tokens": data_utils.collate_tokens(prompts, self.text.pad)[:, 1:].to(self.device),
        }

    # ------------------------------------------------------------------ answers
    @torch.no_grad()
    def answer_many(self, images: Sequence[ImageLike], questions: Optional[Sequence[Optional[str]]] = None,
                    batch_size: int = 8) -> List[Tuple[str, float]]:
        """`(answer, probability)` per image; the probability is of the whole answer sequence."""
        questions = list(questions) if questions is not None else [None] * len(images)
        if len(questions) != len(images):
            raise ValueError(f"{len(images)} images but {len(questions)} questions")
        results = []
        for start in range(0, len(images), batch_size):
            sample = self._batch(images[start: start + batch_size], questions[start: start + batch_size])
            closed = getattr(self.task, "uses_all_candidates", lambda: False)()
            results.extend(self._closed(sample) if closed else self._generated(sample))
        return results

    def answer(self, image: ImageLike, question: Optional[str] = None) -> Tuple[str, float]:
        """The answer to one question about one image (or the caption / class when `question` is None)."""
        return self.answer_many([image], [question])[0]

    def _closed(self, sample):
        scores = self.task.scorer.scores(self.model, sample)
        best = scores.argmax(-1)
        return [(self.task.answers[int(i)], math.exp(float(scores[row, i]))) for row, i in enumerate(best)]

    def _generated(self, sample):
        generator = self.task.sequence_generator([self.model], {"beam": self.beam, "max_len_b": self.max_len})
        hypos = self.task.inference_step(generator, [self.model], sample)
        return [(self.text.decode(h[0]["tokens"]), math.exp(float(h[0]["positional_scores"].sum())))
                for h in hypos]


def load(path: str, overrides: Optional[dict] = None, device: Optional[str] = None,
         dtype: Optional[torch.dtype] = None, **kwargs) -> BiomedGPT:
    """Load a checkpoint for `answer` / `answer_many` (see `BiomedGPT`); `dtype` (e.g. `torch.float16` on a GPU,
    `torch.bfloat16`) casts the weights, default: as stored (fp32)."""
    return BiomedGPT.load(path, overrides=overrides, device=device, dtype=dtype, **kwargs)
