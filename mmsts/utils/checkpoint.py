"""Weights-only loading of MMEngine checkpoints on torch >= 2.6.

torch 2.6 made ``torch.load(weights_only=True)`` the default, and MMEngine
0.10.7 pickles a few non-tensor objects into its checkpoints (the message
hub's ``HistoryBuffer``, numpy scalars and arrays in the log history), so
``--resume`` fails. Rather than turning weights-only loading off, we add
exactly those types to torch's allow-list of safe globals.

``HistoryBuffer`` also pickles its statistics methods, which pickle protocol
2 stores as ``getattr(HistoryBuffer, 'mean')``. Allowing ``builtins.getattr``
itself would let a checkpoint read any attribute of any allowed object, so
that name is mapped to a ``getattr`` that only returns those methods.
"""
import pickle

import torch
from mmengine.utils import digit_version

#: The statistics methods every ``HistoryBuffer`` registers.
_HISTORY_BUFFER_METHODS = ('min', 'max', 'current', 'mean')


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


def history_buffer_method(owner, name: str):
    """``getattr`` restricted to the statistics methods of ``HistoryBuffer``:
    what ``builtins.getattr`` resolves to in a weights-only load.

    Args:
        owner: The object pickle asks an attribute of.
        name (str): The attribute.
    """
    from mmengine.logging.history_buffer import HistoryBuffer
    allowed = set(_HISTORY_BUFFER_METHODS) | set(
        HistoryBuffer._statistics_methods)
    if owner is HistoryBuffer and name in allowed:
        return getattr(owner, name)
    raise pickle.UnpicklingError(
        f'Weights-only load: getattr({owner!r}, {name!r}) is not allowed; '
        f'only the statistics methods of HistoryBuffer ({sorted(allowed)}) '
        'are.')


def mmengine_safe_globals() -> list:
    """The non-tensor types found in MMEngine checkpoints."""
    from mmengine.logging.history_buffer import HistoryBuffer
    found = [HistoryBuffer] + _numpy_safe_globals()
    # (callable, name in the pickle) entries need torch >= 2.5.
    if digit_version(torch.__version__) >= digit_version('2.5.0'):
        found.append((history_buffer_method, 'builtins.getattr'))
    return found


def register_checkpoint_safe_globals() -> None:
    """Allow weights-only ``torch.load`` of MMEngine checkpoints."""
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is not None:  # torch >= 2.4
        add(mmengine_safe_globals())
