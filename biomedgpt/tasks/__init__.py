"""fairseq tasks of the plugin (importing registers them)."""
from .ofa_task import OFAConfig, OFATask  # noqa: F401
from . import image_classify, mnli, vqa_gen  # noqa: F401
