"""Weights-only loading of MMEngine checkpoints on torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default, and MMEngine
0.10.7 pickles a few non-tensor objects into its checkpoints (the message
hub's ``HistoryBuffer``, numpy scalars and arrays in the log history), so
``--resume`` fails. Rather than turning weights-only loading off, we add
exactly those types to torch's allow-list of safe globals.
"""
import torch


def _numpy_safe_globals() -> list:
    import numpy as np
    found = [np.ndarray, np.dtype]
    # numpy 1.x keeps the pickling helpers in numpy.core, numpy 2 in _core.
    for module_name in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        try:
            module = __import__(module_name, fromlist=['_reconstruct'])
        except ImportError:
            continue
        found += [module._reconstruct, module.scalar]
        break
    found += [type(np.dtype(t)) for t in np.sctypeDict.values()
              if isinstance(t, type)]
    return found


def mmengine_safe_globals() -> list:
    """The non-tensor types found in MMEngine checkpoints."""
    from mmengine.logging.history_buffer import HistoryBuffer
    return [HistoryBuffer] + _numpy_safe_globals()


def register_checkpoint_safe_globals() -> None:
    """Allow weights-only ``torch.load`` of MMEngine checkpoints."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:  # torch >= 2.4
        add(mmengine_safe_globals())
