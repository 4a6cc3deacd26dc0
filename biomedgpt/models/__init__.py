"""The `ofa` model and its architectures (importing registers them with fairseq)."""
from .ofa import OFAModel  # noqa: F401  (registers model "ofa")
from .architectures import ARCHITECTURES  # noqa: F401  (registers ofa_tiny ... ofa_huge)
from .attention import get_attention_impl, set_attention_impl  # noqa: F401
