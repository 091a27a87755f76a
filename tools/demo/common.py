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


#: Environment of a deterministic single-threaded demo run: one thread
#: everywhere, and the same kernels on every x86-64 CPU with AVX2 (Intel
#: since 2013, AMD since 2017). PyTorch, MKL, oneDNN, NumPy and OpenCV pick
#: vectorised kernels by instruction set at run time, and those can round
#: differently; these variables cap them at AVX2 (PyTorch's `avx2`
#: kernels, oneDNN's AVX2 ones, NumPy's and OpenCV's without AVX-512) and
#: put MKL in its conditional numerical reproducibility mode `COMPATIBLE`
#: (the same results on Intel and AMD). Capping lower (`default` /
#: `SSE41`) makes the demo's steps 1.7 times slower; a CPU without AVX2
#: runs other kernels and may print other numbers. Features a CPU lacks are
#: ignored (OpenCV logs a line).
DETERMINISTIC_ENV = {
    'OMP_NUM_THREADS': '1',
    'MKL_NUM_THREADS': '1',
    'OPENBLAS_NUM_THREADS': '1',
    'ATEN_CPU_CAPABILITY': 'avx2',
    'MKL_CBWR': 'COMPATIBLE',
    'ONEDNN_MAX_CPU_ISA': 'AVX2',
    'NPY_DISABLE_CPU_FEATURES': ' '.join([
        'AVX512F', 'AVX512CD', 'AVX512_KNL', 'AVX512_KNM', 'AVX512_SKX',
        'AVX512_CLX', 'AVX512_CNL', 'AVX512_ICL', 'AVX512_SPR'
    ]),
    'OPENCV_CPU_DISABLE': ','.join([
        'AVX512F', 'AVX512-COMMON', 'AVX512-KNL', 'AVX512-KNM', 'AVX512-SKX',
        'AVX512-CNL', 'AVX512-CLX', 'AVX512-ICL'
    ]),
    'PYTHONHASHSEED': '0',
}


def deterministic_process() -> None:
    """Make this process single-threaded and deterministic in torch (run in
    a process started with :data:`DETERMINISTIC_ENV`)."""
    import torch
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)
