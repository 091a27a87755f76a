"""A fixed, trained teacher: a classifier from a config and a checkpoint."""
import copy
import os.path as osp
from typing import Union

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.model import BaseDataPreprocessor
from mmengine.runner.checkpoint import CheckpointLoader
from mmpretrain.registry import MODELS
from torch import Tensor

FROZEN_MODES = ('eval', 'train')


@MODELS.register_module()
class FrozenTeacher(nn.Module):
    """A trained classifier used as a fixed teacher: built from a config,
    loaded from a checkpoint at construction, never trained.

    Its parameters do not require gradients, :meth:`init_weights` keeps the
    checkpoint, and with ``mode='eval'`` (default) it stays in evaluation
    mode (running BN statistics, no dropout) whatever mode its owner is put
    in. The classifier receives batches preprocessed by its owner, so it
    must have been trained with the same normalisation.

    Args:
        config (str | dict): A config file whose ``model`` is the teacher
            (a path, or a package's config such as
            ``'mmpretrain::resnet/resnet50_8xb32_in1k.py'``), or the model's
            config itself.
        checkpoint (str): Its weights (a file or any URL MMEngine loads).
        prefix (str): The prefix of the teacher's keys in the checkpoint,
            e.g. ``'teacher.module.'`` for the STS teacher of an mmsts
            checkpoint. Defaults to ``''`` (an mmpretrain checkpoint).
        mode (str): ``'eval'`` (default) or ``'train'`` (batch statistics;
            still no gradient).

    Raises:
        ValueError: naming the checkpoint and the config, if the keys or the
            shapes of the checkpoint do not match the config's model, or for
            an unknown ``mode``.
    """

    def __init__(self,
                 config: Union[str, dict],
                 checkpoint: str,
                 prefix: str = '',
                 mode: str = 'eval') -> None:
        super().__init__()
        if mode not in FROZEN_MODES:
            raise ValueError(f'`teacher.mode` must be one of {FROZEN_MODES}, '
                             f'but got {mode!r}')
        self.mode = mode
        if isinstance(config, str):
            model_cfg = _read_config(config).model
        else:
            model_cfg = copy.deepcopy(config)
        model_cfg = dict(model_cfg)
        # The owner preprocesses the batches.
        model_cfg['data_preprocessor'] = BaseDataPreprocessor()
        model_cfg.pop('init_cfg', None)
        self.classifier = MODELS.build(model_cfg)
        self._load(checkpoint, prefix, config)
        self.classifier.requires_grad_(False)
        self.train(False)

    def _load(self, checkpoint: str, prefix: str, config) -> None:
        where = f'`teacher.checkpoint` {checkpoint!r}'
        if not isinstance(checkpoint, str) or not checkpoint:
            raise ValueError(f'{where}: a checkpoint file is required')
        if '://' not in checkpoint and not osp.isfile(checkpoint):
            raise ValueError(f'{where}: no such file')
        loaded = CheckpointLoader.load_checkpoint(
            checkpoint, map_location='cpu')
        state = loaded.get('state_dict', loaded)
        state = {
            k[len(prefix):]: v
            for k, v in state.items() if k.startswith(prefix)
        }
        expected = self.classifier.state_dict()
        name = config if isinstance(config, str) else 'the teacher config'
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        shapes = [
            f'{k} {tuple(state[k].shape)} vs {tuple(v.shape)}'
            for k, v in expected.items()
            if k in state and tuple(state[k].shape) != tuple(v.shape)
        ]
        problems = []
        if missing:
            problems.append(f'{len(missing)} keys missing (e.g. '
                            f'{missing[:3]})')
        if unexpected:
            problems.append(f'{len(unexpected)} unexpected keys (e.g. '
                            f'{unexpected[:3]})')
        if shapes:
            problems.append(f'shapes differ: {shapes[:3]}')
        if problems:
            raise ValueError(
                f'{where} (prefix {prefix!r}) does not match the model of '
                f'{name}: ' + '; '.join(problems))
        self.classifier.load_state_dict(state)

    def init_weights(self) -> None:
        """Keep the checkpoint's weights."""

    def train(self, mode: bool = True) -> 'FrozenTeacher':
        """Follow ``mode`` only with ``mode='train'``; stay in evaluation
        mode otherwise."""
        return super().train(mode and self.mode == 'train')

    @torch.no_grad()
    def forward(self, inputs: Tensor) -> Tensor:
        """The classifier's logits on preprocessed ``inputs``."""
        return self.classifier(inputs, mode='tensor')


def _read_config(config: str) -> Config:
    """A config file, or a package's config (``'mmpretrain::...'``)."""
    if '::' in config:
        try:
            return get_config(config)
        except Exception as error:  # FileNotFoundError, ValueError, ...
            raise ValueError(f'`teacher.config`: cannot read {config!r} '
                             f'({error})') from error
    if not osp.isfile(config):
        raise ValueError(f'`teacher.config`: no such file {config!r}')
    return Config.fromfile(config)
