"""biomedgpt: BiomedGPT/OFA as a fairseq `--user-dir` plugin.

Importing the package applies the run-time compatibility adjustments (`compat`) and registers every
component (model `ofa`, architectures `ofa_*`, tasks, criterion, lr scheduler) with fairseq. Use
`--user-dir $(python -m biomedgpt.userdir)` with the stock fairseq commands.
"""
from . import compat

compat.apply()

from . import criterions, models, optim, scoring, tasks  # noqa: E402,F401  (registration side effects)

__version__ = "0.1.0"
