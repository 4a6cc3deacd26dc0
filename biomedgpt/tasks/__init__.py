"""fairseq tasks of the plugin (importing registers them)."""
from .ofa_task import OFAConfig, OFATask  # noqa: F401
from . import caption, gigaword, image_classify, mnli, refcoco, snli_ve, unify_task, vqa_gen  # noqa: F401
