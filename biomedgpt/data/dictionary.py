"""The OFA vocabulary: a fairseq dictionary file + `<mask>` + `<code_0..N-1>` + `<bin_0..M-1>`.

With the GPT-2 `dict.txt` of the released models this gives 59,457 symbols (`<mask>` 50264,
`<code_0>` 50265, `<bin_0>` 58457).
"""
import os

from fairseq.data import Dictionary

PACKAGED_BPE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "gpt2_bpe")


def resolve_bpe_dir(bpe_dir) -> str:
    """`bpe_dir` if given, else the GPT-2 BPE files packaged with biomedgpt."""
    return bpe_dir or PACKAGED_BPE_DIR


def build_ofa_dictionary(bpe_dir=None, code_dict_size: int = 8192, num_bins: int = 1000) -> Dictionary:
    """Load `{bpe_dir}/dict.txt` and append the mask, image-code and location-bin symbols."""
    path = os.path.join(resolve_bpe_dir(bpe_dir), "dict.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--bpe-dir: no dictionary file {path} (expected dict.txt next to encoder.json "
                                f"and vocab.bpe, or next to spm.model)")
    dictionary = Dictionary.load(path)
    dictionary.add_symbol("<mask>")
    for i in range(code_dict_size):
        dictionary.add_symbol(f"<code_{i}>")
    for i in range(num_bins):
        dictionary.add_symbol(f"<bin_{i}>")
    return dictionary
