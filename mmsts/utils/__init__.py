from .checkpoint import (mmengine_safe_globals,
                         register_checkpoint_safe_globals)
from .config import fix_collate_fn_scope
from .dist import setup_cpu_distributed

__all__ = [
    'fix_collate_fn_scope', 'mmengine_safe_globals',
    'register_checkpoint_safe_globals', 'setup_cpu_distributed'
]
