from .checkpoint import (mmengine_safe_globals,
                         register_checkpoint_safe_globals)
from .config import fix_collate_fn_scope

__all__ = [
    'fix_collate_fn_scope', 'mmengine_safe_globals',
    'register_checkpoint_safe_globals'
]
