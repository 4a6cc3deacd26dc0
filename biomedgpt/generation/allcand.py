"""All-candidate scoring of a closed answer set (VQA, classification, SNLI-VE).

Each answer is scored as the sum of log-probabilities of its tokens + eos after the row's decoder prompt,
with the trie constraint applied before the softmax (the reference's rule). The encoder runs once per
batch; answers are scored in chunks. Only the logits of tokens the trie allows are computed (a softmax
restricted to the allowed set equals masking the others to -inf), so the 59k-way output layer is never
materialised.
"""
from typing import List, Sequence

import torch
import torch.nn.functional as F

from fairseq.data import data_utils

from .trie import Trie


class CandidateScorer:
    """Scores `answers` (strings) for every row of a batch.

    Args:
        answers: the closed answer set, in label order.
        text: `TextEncoder` (BPE + dictionary).
        trie: the answer trie (`[bos] + answer + [eos]` sequences).
        chunk_size: answers scored per decoder pass (`--valid-batch-size`).
    """

    def __init__(self, answers: Sequence[str], text, trie: Trie, chunk_size: int = 20):
        self.answers = list(answers)
        self.text, self.trie = text, trie
        self.bos, self.eos, self.pad = text.bos, text.eos, text.pad
        self.answer_ids = [text.encode(" " + answer) for answer in self.answers]
        self.chunk_size = max(1, chunk_size)

    def _allowed(self, answer: torch.Tensor) -> List[List[int]]:
        prefix = [self.bos] + answer.tolist()
        return [self.trie.next_tokens(prefix[: i + 1]) for i in range(len(prefix))]

    @torch.no_grad()
    def scores(self, model, sample) -> torch.Tensor:
        """`[B, len(answers)]` log-probability of each answer for each row."""
        net_input = {k: v for k, v in sample["net_input"].items() if k not in ("prev_output_tokens",)}
        encoder_out = model.encoder(**net_input)
        prompts = [torch.as_tensor(p, dtype=torch.long) for p in sample["decoder_prompts"]]
        bsz = len(prompts)
        device = sample["net_input"]["src_tokens"].device
        weight = model.decoder.output_projection.weight
        columns = []
        for start in range(0, len(self.answers), self.chunk_size):
            chunk = list(range(start, min(start + self.chunk_size, len(self.answers))))
            prevs, positions, targets, allowed = [], [], [], []
            for prompt in prompts:
                for a in chunk:
                    answer = self.answer_ids[a]
                    prevs.append(torch.cat([prompt, answer]))
                    positions.append(torch.arange(len(prompt) - 1, len(prompt) + len(answer)))
                    targets.append(torch.cat([answer, torch.tensor([self.eos])]))
                    allowed.append(self._allowed(answer))
            prev = data_utils.collate_tokens(prevs, self.pad).to(device)
            order = torch.arange(bsz, device=device).repeat_interleave(len(chunk))
            features, _ = model.decoder(prev, encoder_out=model.encoder.reorder_encoder_out(encoder_out, order),
                                        features_only=True)
            steps = max(len(p) for p in positions)
            index = torch.stack([F.pad(p, (0, steps - len(p)), value=int(p[-1])) for p in positions]).to(device)
            picked = features.gather(1, index.unsqueeze(-1).expand(-1, -1, features.size(-1)))  # (N, steps, D)
            vocab = sorted({t for rows in allowed for row in rows for t in row})
            lookup = {token: i for i, token in enumerate(vocab)}
            logits = picked @ weight[torch.tensor(vocab, device=device)].t().to(picked.dtype)  # (N, steps, |U|)
            mask = torch.zeros(logits.shape, dtype=torch.bool, device=device)
            target_cols = torch.zeros(len(targets), steps, dtype=torch.long)
            valid = torch.zeros(len(targets), steps, dtype=torch.bool)
            for n, (rows, target) in enumerate(zip(allowed, targets)):
                for t, row in enumerate(rows):
                    mask[n, t, [lookup[token] for token in row]] = True
                    target_cols[n, t] = lookup[int(target[t])]
                    valid[n, t] = True
            lprobs = F.log_softmax(logits.float().masked_fill(~mask, float("-inf")), dim=-1)
            token_scores = lprobs.gather(2, target_cols.to(device).unsqueeze(-1)).squeeze(-1)
            token_scores = token_scores.masked_fill(~valid.to(device), 0.0)
            columns.append(token_scores.sum(-1).view(bsz, len(chunk)))
        return torch.cat(columns, dim=1)

    def predict(self, model, sample) -> List[str]:
        """The best answer of every row."""
        best = self.scores(model, sample).argmax(-1).tolist()
        return [self.answers[i] for i in best]


class CandidateGenerator:
    """All-candidate scoring as a fairseq generator: `generate(models, sample)` returns, per row, the answers
    ranked by log-probability in fairseq's hypothesis format, so `fairseq-generate` prints and scores them.
    With several models, their answer log-probabilities are averaged in probability space."""

    def __init__(self, scorer: CandidateScorer, nbest: int = 1):
        self.scorer, self.nbest = scorer, max(1, nbest)
        self.eos = scorer.eos
        self.symbols_to_strip_from_output = {scorer.bos, scorer.eos}  # read by fairseq-generate

    @torch.no_grad()
    def generate(self, models, sample, **kwargs):
        scores = torch.stack([self.scorer.scores(model, sample) for model in models])
        scores = torch.logsumexp(scores, dim=0) - torch.log(torch.tensor(float(len(models))))
        hypos = []
        for row in scores:
            ranked = row.topk(min(self.nbest, row.numel()))
            hypos.append([self._hypothesis(int(i), float(s)) for s, i in zip(ranked.values, ranked.indices)])
        return hypos

    def _hypothesis(self, answer: int, score: float):
        tokens = torch.cat([self.scorer.answer_ids[answer], torch.tensor([self.scorer.eos])])
        return {"tokens": tokens, "score": score, "positional_scores": torch.full((len(tokens),), score / len(tokens)),
                "alignment": None, "attention": None}
