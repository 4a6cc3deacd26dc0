"""One converter per public dataset. Each module defines

* `NAME` (the `biomedgpt-prepare` subcommand), `HELP` (one line) and `LAYOUT` (the raw layout it reads);
* `add_arguments(parser)` for its own options (may be absent);
* `convert(root, out_dir, options=None, **kwargs) -> Report`.
"""
import importlib

MODULES = ["vqa_rad", "slake", "pathvqa", "medmnist", "iu_xray", "peir_gross", "roco", "meqsum", "mednli"]


def load(module_name: str):
    return importlib.import_module(f"{__name__}.{module_name}")


def all_converters():
    """The converter modules, in the order of `MODULES`."""
    return [load(name) for name in MODULES]
