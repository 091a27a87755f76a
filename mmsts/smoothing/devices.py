"""Which tensors the host code paths update.

On the host (CPU) reading a value costs nothing, so the non-finite guard
checks the student at once, and the ``'element'`` granularity runs in numpy.
On an accelerator every step must stay free of host-device
synchronisations: the guard keeps its flag on the device and the fine
granularities run torch kernels there. The choice is made by device type, from
:data:`HOST_DEVICE_TYPES` alone, read at every call.
"""
import torch

#: Device types updated by the host code paths (:class:`HostGuard`,
#: :class:`HostFineUpdate`); every other device type takes the accelerator
#: paths (:class:`DeviceGuard`, :class:`TorchFineUpdate`). Tests set it to
#: ``()`` to run the accelerator paths on CPU tensors.
HOST_DEVICE_TYPES = ('cpu', )


def on_host(device: torch.device) -> bool:
    """Whether tensors on ``device`` take the host code paths.

    Args:
        device (torch.device): The device of a group of tensors.
    """
    return device.type in HOST_DEVICE_TYPES
