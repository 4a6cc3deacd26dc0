"""Prefix tree over token sequences: which tokens may follow a prefix (closed answer sets)."""
from typing import Dict, Iterable, List

import torch


class Trie:
    """Token-id prefix tree. `next_tokens(prefix)` lists the allowed continuations; a prefix that left the
    tree gets `[eos]` (the reference's behaviour, so decoding can always stop)."""

    def __init__(self, eos: int):
        self.eos = eos
        self.root: Dict[int, dict] = {}
        self.num_sequences = 0

    def insert(self, sequence: Iterable[int]) -> None:
        node, new = self.root, False
        for token in sequence:
            if int(token) not in node:
                new = True
            node = node.setdefault(int(token), {})
        self.num_sequences += int(new)

    def next_tokens(self, prefix: Iterable[int]) -> List[int]:
        node = self.root
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return [self.eos]
        return list(node.keys())

    def constraint_mask(self, answer: torch.Tensor, bos: int, vocab_size: int) -> torch.Tensor:
        """`[len(answer) + 1, V]` bool: row i allows the tokens that may follow `[bos] + answer[:i]`.

        `answer` excludes bos and eos; the last row covers the position that predicts eos."""
        prefix = [bos] + [int(t) for t in answer]
        mask = torch.zeros(len(prefix), vocab_size, dtype=torch.bool)
        for i in range(len(prefix)):
            mask[i, self.next_tokens(prefix[: i + 1])] = True
        return mask
