"""Multi-process training on machines without a GPU.

MMEngine 0.10.7 assumes that distributed means CUDA: its ``pytorch``,
``slurm`` and ``mpi`` launchers call ``torch.cuda.set_device`` before
creating the process group, the default model wrapper passes CUDA
``device_ids`` to ``DistributedDataParallel``, and SyncBN layers only run on
GPUs. :func:`setup_cpu_distributed` adapts a config so that the same runner
works with the ``gloo`` backend on CPU-only machines (e.g. to test the
distributed code paths on a laptop or in CI).
"""
import datetime
import gc
import logging
import os
import subprocess
from contextlib import contextmanager
from typing import Dict, Iterator

import torch
import torch.distributed as torch_dist
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS
from mmpretrain.registry import MODEL_WRAPPERS as MMPRETRAIN_MODEL_WRAPPERS
from torch.nn.parallel import DistributedDataParallel

#: Backends of ``torch.distributed`` that run without a GPU.
CPU_BACKENDS = ('gloo', 'mpi')
#: Distributed launchers and the commands that start them.
LAUNCHERS = dict(pytorch='torchrun', slurm='srun', mpi='mpirun')


def setup_cpu_distributed(cfg: Config) -> bool:
    """Prepare a multi-process run on a machine without CUDA.

    Does nothing (and returns False) when ``cfg.launcher`` is ``'none'`` or
    CUDA is available, so GPU runs are unchanged. Otherwise:

    * ``env_cfg.dist_cfg.backend`` becomes ``'gloo'`` (unless it is already a
      CPU backend) and the process group is initialised here, from the
      variables set by ``torchrun`` (``RANK``, ``WORLD_SIZE``,
      ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), or derived from
      Slurm's / Open MPI's like MMEngine does. The runner then finds it
      initialised and skips its own CUDA-only ``init_dist``.
    * The model is wrapped by :class:`CPUDistributedDataParallel`
      (``MMDistributedDataParallel`` with ``device_ids=None``, SyncBN
      reverted to BN), with ``broadcast_buffers=False`` as the runner's
      default wrapper, or with the arguments of a user-given
      ``MMDistributedDataParallel`` config. Other ``DistributedDataParallel``
      wrappers get ``device_ids=None`` unless they set them.

    Args:
        cfg (Config): The full config, modified in place. Its ``launcher``
            is one of ``'none'``, ``'pytorch'``, ``'slurm'``, ``'mpi'``.

    Returns:
        bool: Whether the config was set up for CPU distributed running.
    """
    launcher = cfg.get('launcher', 'none')
    if launcher == 'none' or torch.cuda.is_available():
        return False
    if launcher not in LAUNCHERS:
        raise ValueError(f"`launcher` must be 'none' or one of "
                         f'{tuple(LAUNCHERS)}, but got {launcher!r}')

    if cfg.get('env_cfg') is None:
        cfg.env_cfg = dict()
    if cfg.env_cfg.get('dist_cfg') is None:
        cfg.env_cfg.dist_cfg = dict()
    dist_cfg = cfg.env_cfg.dist_cfg
    backend = dist_cfg.get('backend', 'nccl')
    if backend not in CPU_BACKENDS:
        print_log(
            f'CUDA is not available: using the "gloo" backend instead of '
            f'env_cfg.dist_cfg.backend={backend!r}.',
            logger='current')
        dist_cfg['backend'] = 'gloo'
    if not torch_dist.is_initialized():
        init_cpu_process_group(launcher, **dist_cfg)

    _set_cpu_model_wrapper(cfg)
    return True


@contextmanager
def cpu_distributed(cfg: Config) -> Iterator[bool]:
    """:func:`setup_cpu_distributed`, then a clean gloo shutdown.

    Build and run the runner inside the ``with`` block and keep no reference
    to it afterwards: on leaving, the DDP wrapper is freed first (its reducer
    holds gloo work) and the process group is destroyed, without which
    processes sometimes abort at exit ("terminate called without an active
    exception").

    Args:
        cfg (Config): The config, modified as by
            :func:`setup_cpu_distributed`.

    Yields:
        bool: Whether a CPU process group was started.
    """
    started = setup_cpu_distributed(cfg)
    try:
        yield started
    finally:
        if started and torch_dist.is_initialized():
            gc.collect()
            torch_dist.destroy_process_group()


def init_cpu_process_group(launcher: str,
                           backend: str = 'gloo',
                           **kwargs) -> None:
    """Initialise ``torch.distributed`` without touching CUDA.

    Args:
        launcher (str): ``'pytorch'`` (``torchrun``: the rendezvous variables
            are already set), ``'slurm'`` or ``'mpi'`` (translated from
            ``SLURM_*`` / ``OMPI_COMM_WORLD_*`` as MMEngine's launchers do).
        backend (str): ``'gloo'`` or ``'mpi'``. Defaults to ``'gloo'``.
        **kwargs: Other ``env_cfg.dist_cfg`` items, passed to
            :func:`torch.distributed.init_process_group`; ``timeout`` is in
            seconds, as in MMEngine.
    """
    if backend not in CPU_BACKENDS:
        raise ValueError(f'`backend` must be one of {CPU_BACKENDS} on CPU, '
                         f'but got {backend!r}')
    os.environ.update(torchrun_env(launcher, os.environ))
    timeout = kwargs.get('timeout')
    if timeout is not None and not isinstance(timeout, datetime.timedelta):
        kwargs['timeout'] = datetime.timedelta(seconds=timeout)
    kwargs.pop('init_backend', None)  # deepspeed/colossalai need CUDA
    torch_dist.init_process_group(backend=backend, **kwargs)


def torchrun_env(launcher: str, environ: Dict[str, str]) -> Dict[str, str]:
    """The ``torchrun`` rendezvous variables for a launcher's environment.

    Args:
        launcher (str): ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        environ (dict): The process environment.

    Returns:
        dict: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
        ``MASTER_PORT``, taking those already in ``environ`` first.
    """
    if launcher == 'pytorch':
        names = {}
    elif launcher == 'slurm':
        names = dict(
            RANK='SLURM_PROCID',
            WORLD_SIZE='SLURM_NTASKS',
            LOCAL_RANK='SLURM_LOCALID')
    elif launcher == 'mpi':
        names = dict(
            RANK='OMPI_COMM_WORLD_RANK',
            WORLD_SIZE='OMPI_COMM_WORLD_SIZE',
            LOCAL_RANK='OMPI_COMM_WORLD_LOCAL_RANK')
    else:
        raise ValueError(f'`launcher` must be one of {tuple(LAUNCHERS)}, '
                         f'but got {launcher!r}')
    env = {key: environ[src] for key, src in names.items() if src in environ}
    env.setdefault('LOCAL_RANK', environ.get('LOCAL_RANK', '0'))
    env['MASTER_PORT'] = environ.get('MASTER_PORT', '29500')
    if 'MASTER_ADDR' in environ:
        env['MASTER_ADDR'] = environ['MASTER_ADDR']
    elif launcher == 'slurm' and 'SLURM_NODELIST' in environ:
        env['MASTER_ADDR'] = subprocess.getoutput(
            f'scontrol show hostname {environ["SLURM_NODELIST"]} | head -n1')
    missing = [
        key for key in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR')
        if key not in env and key not in environ
    ]
    if missing:
        raise RuntimeError(f'launcher={launcher!r} needs the environment '
                           f'variables {missing}; is this process started '
                           f'by {LAUNCHERS[launcher]}?')
    return env


def _set_cpu_model_wrapper(cfg: Config) -> None:
    """Make the runner wrap the model for CPU processes."""
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    wrapper = cfg.model_wrapper_cfg
    wrapper_type = wrapper.get('type', 'MMDistributedDataParallel')
    if wrapper_type in ('MMDistributedDataParallel',
                        MMDistributedDataParallel):
        wrapper['type'] = 'mmpretrain.CPUDistributedDataParallel'
        wrapper_type = CPUDistributedDataParallel
    elif isinstance(wrapper_type, str):
        wrapper_type = MODEL_WRAPPERS.get(wrapper_type)
    if isinstance(wrapper_type, type) and issubclass(wrapper_type,
                                                     DistributedDataParallel):
        # The runner passes CUDA ``device_ids=[LOCAL_RANK]`` unless set.
        wrapper.setdefault('device_ids', None)


@MMPRETRAIN_MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """:class:`MMDistributedDataParallel` for processes without a GPU.

    ``DistributedDataParallel`` refuses SyncBN layers in a CPU module, and the
    runner wraps the model right after building it, so the SyncBN layers
    (e.g. the default norm of mmpretrain's ``NonLinearNeck``, or those made
    by ``cfg.sync_bn``) are reverted to BN here, with a warning: batch
    statistics are then computed per process. The parameters and buffers
    are kept (shared, not copied).

    Args:
        module (nn.Module): The model, on CPU.
        device_ids (None): Must be None (the module is on CPU).
        **kwargs: Other arguments of :class:`MMDistributedDataParallel`,
            e.g. ``broadcast_buffers`` and ``find_unused_parameters``.
    """

    def __init__(self, module: nn.Module, device_ids=None, **kwargs) -> None:
        if device_ids is not None:
            raise ValueError(
                'CPUDistributedDataParallel wraps a CPU module: '
                f'model_wrapper_cfg.device_ids must be None, but got '
                f'{device_ids!r}')
        num_sync_bn = sum(
            isinstance(m, nn.SyncBatchNorm) for m in module.modules())
        if num_sync_bn:
            print_log(
                f'SyncBN cannot run on CPU: {num_sync_bn} SyncBatchNorm '
                'layers were reverted to BatchNorm, so batch statistics are '
                'computed per process.',
                logger='current',
                level=logging.WARNING)
            module = revert_sync_batchnorm(module)
        super().__init__(module=module, device_ids=None, **kwargs)
