"""mmsts: Spatial-Temporal Smoothing teachers for MMEngine and mmpretrain.

Importing the package registers its modules in mmpretrain's registries, so
``custom_imports = dict(imports=['mmsts'])`` is all a config needs.
"""
from .version import __version__
from .utils import (patch_runner_collate_fn_scope,
                    register_checkpoint_safe_globals)

register_checkpoint_safe_globals()
patch_runner_collate_fn_scope()

from . import datasets, engine, models  # noqa: E402,F401  (registers)
from . import registry  # noqa: E402,F401  (the `mmsts` scope, `mmsts::`)

__all__ = ['__version__']
