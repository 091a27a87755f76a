"""A data preprocessor for multi-branch (semi-supervised) batches."""
from typing import Dict, List, Optional, Union

import torch
from mmengine.model import BaseDataPreprocessor
from mmpretrain.registry import MODELS
from torch import nn


@MODELS.register_module()
class MultiBranchDataPreprocessor(BaseDataPreprocessor):
    """Preprocess every branch of a batch made by the ``MultiBranch``
    transform with one wrapped data preprocessor.

    A multi-branch batch (``pseudo_collate`` of ``MultiBranch`` outputs) is
    ``{'inputs': {branch: [Tensor | None, ...]}, 'data_samples': {branch:
    [DataSample | None, ...]}}``; a sample that does not fill a branch has
    None there. For each branch, the None entries are dropped and the rest
    goes through the wrapped preprocessor (normalisation, stacking, labels
    moved to the device), giving::

        {'inputs': {'sup': Tensor[B, C, H, W],
                    'unsup_weak': Tensor[mu * B, C, H, W],
                    'unsup_strong': Tensor[mu * B, C, H, W]},
         'data_samples': {'sup': [B DataSample],
                          'unsup_weak': [mu * B DataSample],
                          'unsup_strong': [mu * B DataSample]}}

    A branch with no sample in the batch maps to None in ``'inputs'`` and to
    an empty list in ``'data_samples'``. Any other batch (e.g. validation
    and test batches made by plain ``PackInputs`` pipelines) is passed to the
    wrapped preprocessor unchanged, so the output is exactly its output.

    Args:
        data_preprocessor (dict | nn.Module): The preprocessor of one branch,
            e.g. ``dict(type='ClsDataPreprocessor', mean=..., std=...)``.
    """

    def __init__(self, data_preprocessor: Union[dict, nn.Module]) -> None:
        super().__init__()
        if isinstance(data_preprocessor, dict):
            data_preprocessor = MODELS.build(data_preprocessor)
        if not isinstance(data_preprocessor, nn.Module):
            raise TypeError('`data_preprocessor` must be a config dict or a '
                            'data preprocessor module, but got '
                            f'{data_preprocessor!r}.')
        self.data_preprocessor = data_preprocessor

    @staticmethod
    def is_multi_branch(data: dict) -> bool:
        """Whether ``data`` is a batch of ``MultiBranch`` outputs.

        Args:
            data (dict): A batch from the data loader.
        """
        return isinstance(data, dict) and isinstance(data.get('inputs'), dict)

    def forward(self, data: dict, training: bool = False) -> dict:
        """Preprocess a batch, branch by branch if it has branches.

        Args:
            data (dict): A batch from the data loader.
            training (bool): Whether in training mode. Passed on to the
                wrapped preprocessor.

        Returns:
            dict: ``{'inputs': ..., 'data_samples': ...}``, per branch for a
            multi-branch batch.
        """
        if not self.is_multi_branch(data):
            return self.data_preprocessor(data, training)
        all_samples = data.get('data_samples') or {}
        inputs: Dict[str, Optional[torch.Tensor]] = {}
        data_samples: Dict[str, List] = {}
        for branch, branch_inputs in data['inputs'].items():
            branch_samples = all_samples.get(branch)
            if branch_samples is None:
                branch_samples = [None] * len(branch_inputs)
            if len(branch_samples) != len(branch_inputs):
                raise ValueError(
                    f'Branch {branch!r} has {len(branch_inputs)} inputs but '
                    f'{len(branch_samples)} data samples.')
            keep = [i for i, x in enumerate(branch_inputs) if x is not None]
            if not keep:
                inputs[branch], data_samples[branch] = None, []
                continue
            samples = [branch_samples[i] for i in keep]
            out = self.data_preprocessor(
                dict(
                    inputs=[branch_inputs[i] for i in keep],
                    data_samples=None if any(s is None
                                             for s in samples) else samples),
                training)
            inputs[branch] = out['inputs']
            data_samples[branch] = out['data_samples']
        return dict(inputs=inputs, data_samples=data_samples)

    # `nn.Module.to()` does not call the children's `to()`, so the wrapped
    # preprocessor's `device` must be updated here.
    def to(self, *args, **kwargs) -> nn.Module:
        """Move to a device, also setting the wrapped preprocessor's."""
        self.data_preprocessor.to(*args, **kwargs)
        return super().to(*args, **kwargs)

    def cuda(self, *args, **kwargs) -> nn.Module:
        """Move to the current CUDA device, with the wrapped preprocessor."""
        self.data_preprocessor.cuda(*args, **kwargs)
        return super().cuda(*args, **kwargs)

    def musa(self, *args, **kwargs) -> nn.Module:
        """Move to the current MUSA device, with the wrapped preprocessor."""
        self.data_preprocessor.musa(*args, **kwargs)
        return super().musa(*args, **kwargs)

    def npu(self, *args, **kwargs) -> nn.Module:
        """Move to the current NPU device, with the wrapped preprocessor."""
        self.data_preprocessor.npu(*args, **kwargs)
        return super().npu(*args, **kwargs)

    def mlu(self, *args, **kwargs) -> nn.Module:
        """Move to the current MLU device, with the wrapped preprocessor."""
        self.data_preprocessor.mlu(*args, **kwargs)
        return super().mlu(*args, **kwargs)

    def cpu(self, *args, **kwargs) -> nn.Module:
        """Move to the CPU, with the wrapped preprocessor."""
        self.data_preprocessor.cpu(*args, **kwargs)
        return super().cpu(*args, **kwargs)
