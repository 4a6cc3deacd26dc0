"""The plugin's sequence generator: fairseq's beam search (and its sampling / diverse-beam strategies) with
OFA's decoding rules.

* Decoding starts from BOS, not EOS.
* A closed answer set (`Trie`) or an id range (`--constraint-range start,end`) restricts each step; the mask is
  applied to the logits *before* the log-softmax, so probabilities renormalise over the allowed tokens (the
  reference's rule). In zero-shot mode the mask is applied after the log-softmax and the trie sees the whole
  prefix, as the reference's zero-shot evaluation did.
* Decoder prompts come in as fairseq prefix tokens and are stripped from the returned hypotheses.
* `generate(models, ...)` decodes with the models it is given (fairseq's generator silently used the ones it
  was built with, which made validation with EMA weights decode with the raw weights).
"""
import math
from typing import Dict, List, Optional

import torch
from torch import Tensor

from fairseq.sequence_generator import EnsembleModel, SequenceGenerator

from .trie import Trie

NUM_SPECIAL_IDS = 4  # bos, pad, eos, unk: always allowed by a constraint range


def parse_constraint_range(value: Optional[str]):
    """`"start,end"` -> `(start, end)`; None/empty -> None."""
    if value is None or str(value).strip() == "":
        return None
    try:
        start, end = (int(part) for part in str(value).split(","))
    except ValueError:
        raise ValueError(f"--constraint-range must be 'start,end', got {value!r}") from None
    return start, end


class ConstrainedEnsemble(EnsembleModel):
    """`EnsembleModel` whose next-token distribution honours a trie / id range; it tracks, per beam row, where
    the decoder prompt ends (rows are reordered together with the encoder output)."""

    def __init__(self, models, trie: Optional[Trie], constraint_range, zero_shot: bool, bos: int):
        super().__init__(models)
        self.trie, self.constraint_range, self.zero_shot, self.bos = trie, constraint_range, zero_shot, bos
        self.prompt_lengths: Optional[Tensor] = None  # per row: tokens before the answer (bos + prefix)

    def reorder_encoder_out(self, encoder_outs, new_order):
        if self.prompt_lengths is not None:
            self.prompt_lengths = self.prompt_lengths.to(new_order.device).index_select(0, new_order)
        return super().reorder_encoder_out(encoder_outs, new_order)

    def _allowed(self, tokens: Tensor, vocab_size: int) -> Optional[Tensor]:
        """`[rows, V]` bool of allowed next tokens, or None when nothing is constrained."""
        if self.trie is None and self.constraint_range is None:
            return None
        allowed = torch.ones(tokens.size(0), vocab_size, dtype=torch.bool, device=tokens.device)
        if self.constraint_range is not None:
            start, end = self.constraint_range
            allowed[:, NUM_SPECIAL_IDS:start] = False
            allowed[:, end:] = False
        if self.trie is not None:
            rows = tokens.tolist()
            lengths = self.prompt_lengths.tolist() if self.prompt_lengths is not None else [1] * len(rows)
            for row, (sequence, prompt_length) in enumerate(zip(rows, lengths)):
                if self.zero_shot:
                    prefix = sequence
                elif len(sequence) >= prompt_length:
                    prefix = [self.bos] + sequence[prompt_length:]
                else:
                    continue  # still inside the forced decoder prompt
                allowed[row] = False
                allowed[row, self.trie.next_tokens(prefix)] = True
        return allowed

    def forward_decoder(self, tokens, encoder_outs: List[Dict[str, List[Tensor]]], incremental_states,
                        temperature: float = 1.0):
        log_probs = []
        attn = None
        allowed = None
        for i, model in enumerate(self.models):
            encoder_out = encoder_outs[i] if self.has_encoder() else None
            logits, extra = model.decoder.forward(tokens, encoder_out=encoder_out,
                                                  incremental_state=incremental_states[i])
            logits = logits[:, -1, :].float() / temperature
            if allowed is None:
                allowed = self._allowed(tokens, logits.size(-1))
            if allowed is not None and not self.zero_shot:
                logits = logits.masked_fill(~allowed, float("-inf"))
            lprobs = torch.log_softmax(logits, dim=-1)
            if allowed is not None and self.zero_shot:
                lprobs = lprobs.masked_fill(~allowed, float("-inf"))
            log_probs.append(lprobs)
            layer_attn = extra.get("attn", [None])[0] if isinstance(extra, dict) else None
            if layer_attn is not None:
                attn = layer_attn[:, -1, :] if attn is None else attn + layer_attn[:, -1, :]
        if len(log_probs) == 1:
            return log_probs[0], attn
        average = torch.logsumexp(torch.stack(log_probs, dim=0), dim=0) - math.log(len(log_probs))
        return average, (attn / len(log_probs) if attn is not None else None)


class OFASequenceGenerator(SequenceGenerator):
    """fairseq's `SequenceGenerator` with the OFA rules above.

    Args (besides fairseq's): `constraint_trie` (answer trie; the beam is capped at the number of answers),
    `constraint_range` (`"start,end"` or a tuple), `zero_shot` (mask after the softmax, no prompt prefix).
    """

    def __init__(self, models, tgt_dict, constraint_trie: Optional[Trie] = None, constraint_range=None,
                 zero_shot: bool = False, **kwargs):
        super().__init__(models, tgt_dict, **kwargs)
        if isinstance(constraint_range, str) or constraint_range is None:
            constraint_range = parse_constraint_range(constraint_range)
        self.constraint_trie, self.constraint_range, self.zero_shot = constraint_trie, constraint_range, zero_shot
        if constraint_trie is not None and constraint_trie.num_sequences > 0:
            # a beam wider than the answer set could never fill up with finished answers (fairseq then fails
            # with `step < max_len`), and the extra beams could only hold impossible continuations
            self.beam_size = min(self.beam_size, constraint_trie.num_sequences)
        self.model = self._ensemble(models)

    def _ensemble(self, models):
        ensemble = ConstrainedEnsemble(models, self.constraint_trie, self.constraint_range, self.zero_shot,
                                       self.tgt_dict.bos())
        ensemble.eval()
        return ensemble

    @torch.no_grad()
    def generate(self, models, sample: Dict[str, Dict[str, Tensor]], prefix_tokens: Optional[Tensor] = None,
                 constraints: Optional[Tensor] = None, bos_token: Optional[int] = None, **kwargs):
        """Hypotheses per row (fairseq's format), decoded from BOS with `prefix_tokens` forced then removed."""
        if list(models) != list(self.model.models):
            self.model = self._ensemble(models)
        if self.zero_shot:
            prefix_tokens = None
        bsz = sample["net_input"]["src_tokens"].size(0)
        device = sample["net_input"]["src_tokens"].device
        if prefix_tokens is not None:
            prefix_lengths = prefix_tokens.ne(self.pad).sum(1)
        else:
            prefix_lengths = torch.zeros(bsz, dtype=torch.long, device=device)
        self.model.prompt_lengths = prefix_lengths + 1  # bos + prefix
        try:
            hypos = self._generate(sample, prefix_tokens=prefix_tokens, constraints=constraints,
                                   bos_token=self.tgt_dict.bos())
        finally:
            self.model.prompt_lengths = None
        for row, row_hypos in enumerate(hypos):
            strip = int(prefix_lengths[row])
            if strip == 0:
                continue
            for hypo in row_hypos:
                hypo["tokens"] = hypo["tokens"][strip:]
                hypo["positional_scores"] = hypo["positional_scores"][strip:]
                if hypo.get("alignment") is not None and len(hypo["alignment"]) > strip:
                    hypo["alignment"] = hypo["alignment"][strip:]
        return hypos
