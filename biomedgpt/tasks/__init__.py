"""fairseq tasks of the plugin (importing registers them)."""
from .ofa_task import OFAConfig, OFATask  # noqa: F401
