"""Pieces shared by the CPU demos in ``tools/demo/``."""
import importlib.util
import os.path as osp
from datetime import datetime
from typing import Optional

from mmengine.hooks import Hook
from mmengine.utils import ProgressBar

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


class ProgressBarHook(Hook):
    """Show a training run's progress with :class:`mmengine.utils.ProgressBar`.

    Args:
        updates (int): About how many times the bar is redrawn in a run.
            Defaults to 40.
    """

    priority = 'VERY_LOW'

    def __init__(self, updates: int = 40) -> None:
        self.updates = updates
        self.bar: Optional[ProgressBar] = None
        self.every = 1

    def before_train(self, runner) -> None:
        total = runner.max_iters - runner.iter
        self.every = max(1, total // self.updates)
        self.bar = ProgressBar(total)

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        done = runner.iter + 1
        if done % self.every == 0 or done == runner.max_iters:
            self.bar.update(done - self.bar.completed)

    def after_train(self, runner) -> None:
        self.bar.file.write('\n')
        self.bar.file.flush()


def load_compare_runs():
    """Import ``tools/analysis/compare_runs.py`` (tools are not a package)."""
    path = osp.join(REPO_ROOT, 'tools', 'analysis', 'compare_runs.py')
    spec = importlib.util.spec_from_file_location('compare_runs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def experiment_name(prefix: str) -> str:
    """A unique experiment name: runners of one process must not share one,
    as MMEngine keys the logger, visualizer and scope instances by it."""
    return f'{prefix}_{datetime.now():%Y%m%d_%H%M%S_%f}'
