from .checkpoint import (mmengine_safe_globals,
                         register_checkpoint_safe_globals)
from .config import fix_collate_fn_scope, patch_runner_collate_fn_scope
from .dist import cpu_distributed, setup_cpu_distributed

__all__ = [
    'fix_collate_fn_scope', 'patch_runner_collate_fn_scope',
    'mmengine_safe_globals',
    'register_checkpoint_safe_globals', 'cpu_distributed',
    'setup_cpu_distributed'
]
