"""Train one config in a single-threaded, deterministic process.

``tools/train.py`` with, before anything is built, one intra-op and one
inter-op thread (``torch.set_num_threads(1)``) and
``torch.use_deterministic_algorithms(True)``; the study runner
(``tools/studies/runner.py``) also sets the environment that pins the
kernels (:data:`runner.PINNED_ENV`), which must be in place before torch is
imported, so it is set by the parent, not here. Arguments are those of
``tools/train.py``.

Example::

    OMP_NUM_THREADS=1 ATEN_CPU_CAPABILITY=default MKL_CBWR=COMPATIBLE \\
        ONEDNN_MAX_CPU_ISA=AVX2 python tools/studies/train_one.py CONFIG \\
        --work-dir work_dirs/x --resume
"""
import os.path as osp
import sys

import torch

TOOLS = osp.dirname(osp.dirname(osp.abspath(__file__)))


def main(argv=None) -> None:
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    torch.use_deterministic_algorithms(True)
    sys.path.insert(0, TOOLS)
    import train  # tools/train.py
    train.main(argv)


if __name__ == '__main__':
    main()
