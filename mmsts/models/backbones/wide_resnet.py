"""Wide residual networks for 32x32 images, as used by FixMatch."""
from typing import Optional, Sequence, Tuple, Union

import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import (build_activation_layer, build_conv_layer,
                      build_norm_layer)
from mmengine.model import BaseModule
from mmpretrain.models.backbones.base_backbone import BaseBackbone
from mmpretrain.registry import MODELS
from torch import Tensor


class WideBasicBlock(BaseModule):
    """Pre-activation basic block of a wide residual network.

    ``out = conv3x3(act(norm(conv3x3(act(norm(x)), stride)))) + shortcut``,
    with dropout between the two convolutions if ``drop_rate > 0``. The
    shortcut is the identity when the shape does not change, and otherwise a
    strided 1x1 convolution of the raw input, or of the pre-activated input
    ``act(norm(x))`` when ``activate_before_residual`` is True (FixMatch does
    this in the first group only).

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        stride (int): Stride of the first convolution. Defaults to 1.
        drop_rate (float): Dropout probability between the convolutions.
            Defaults to 0.
        activate_before_residual (bool): Feed the pre-activated input to the
            projection shortcut. Defaults to False.
        conv_bias (bool): Whether convolutions have a bias. Defaults to True.
        conv_cfg (dict, optional): Config of the convolutions.
            Defaults to None (``nn.Conv2d``).
        norm_cfg (dict): Config of the normalization layers.
            Defaults to ``dict(type='BN', momentum=0.001, eps=0.001)``.
        act_cfg (dict): Config of the activations.
            Defaults to ``dict(type='LeakyReLU', negative_slope=0.1)``.
        init_cfg (dict, optional): Initialization config. Defaults to None.
    """

    def __init__(self,
                 in_channels: int,
                 out_channels: int,
                 stride: int = 1,
                 drop_rate: float = 0.,
                 activate_before_residual: bool = False,
                 conv_bias: bool = True,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: dict = dict(type='BN', momentum=0.001, eps=0.001),
                 act_cfg: dict = dict(type='LeakyReLU', negative_slope=0.1),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg)
        self.drop_rate = drop_rate
        self.activate_before_residual = activate_before_residual
        self.norm1 = build_norm_layer(norm_cfg, in_channels)[1]
        self.act1 = build_activation_layer(act_cfg)
        self.conv1 = build_conv_layer(
            conv_cfg,
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=1,
            bias=conv_bias)
        self.norm2 = build_norm_layer(norm_cfg, out_channels)[1]
        self.act2 = build_activation_layer(act_cfg)
        self.conv2 = build_conv_layer(
            conv_cfg,
            out_channels,
            out_channels,
            kernel_size=3,
            padding=1,
            bias=conv_bias)
        if in_channels != out_channels or stride != 1:
            self.shortcut = build_conv_layer(
                conv_cfg,
                in_channels,
                out_channels,
                kernel_size=1,
                stride=stride,
                bias=conv_bias)
        else:
            self.shortcut = None

    def forward(self, x: Tensor) -> Tensor:
        """Forward one block."""
        pre = self.act1(self.norm1(x))
        out = self.act2(self.norm2(self.conv1(pre)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        if self.shortcut is None:
            return x + out
        return self.shortcut(pre if self.activate_before_residual else x) + out


@MODELS.register_module()
class WideResNet(BaseBackbone):
    """Wide residual network for CIFAR (WRN-d-k), with FixMatch's choices.

    A 3x3 stem convolution (16 channels) followed by three groups of
    ``(depth - 4) / 6`` pre-activation blocks with ``16k``, ``32k`` and
    ``64k`` channels (strides ``first_stride``, 2, 2), then a final
    normalization and activation. As in FixMatch (Sohn et al., 2020) and its
    PyTorch ports: leaky ReLU with slope 0.1, batch normalization with
    PyTorch ``momentum=0.001`` (TensorFlow's decay 0.999) and ``eps=0.001``,
    and the first block of the first group feeds its pre-activated input to
    the projection shortcut. FixMatch uses WRN-28-2 (1.47 M parameters with a
    10-class linear head) on CIFAR-10 and WRN-28-8 (23.4 M with a 100-class
    head) on CIFAR-100.

    Follow it with ``GlobalAveragePooling`` and a ``LinearClsHead``.

    Args:
        depth (int): Number of layers; ``(depth - 4) % 6 == 0``.
            Defaults to 28.
        widen_factor (int): Width multiplier ``k``. Defaults to 2.
        in_channels (int): Input image channels. Defaults to 3.
        base_channels (int): Channels of the stem; the groups have
            ``base_channels * widen_factor * (1, 2, 4)``. Defaults to 16.
        first_stride (int): Stride of the first group. Defaults to 1.
        drop_rate (float): Dropout probability inside the blocks.
            Defaults to 0.
        out_indices (Sequence[int] | int): Groups (0, 1, 2) whose outputs are
            returned; the last group's output goes through the final
            normalization and activation. Defaults to ``(2, )``.
        conv_bias (bool): Whether convolutions have a bias (True in FixMatch's
            TensorFlow code, TorchSSL and USB; False in kekmodel's port).
            Defaults to True.
        conv_cfg (dict, optional): Config of the convolutions.
            Defaults to None.
        norm_cfg (dict): Config of the normalization layers.
            Defaults to ``dict(type='BN', momentum=0.001, eps=0.001)``.
        act_cfg (dict): Config of the activations.
            Defaults to ``dict(type='LeakyReLU', negative_slope=0.1)``.
        init_cfg (dict | list[dict], optional): Initialization config.
            Defaults to Kaiming normal (fan-out) convolutions and unit
            normalization layers, as FixMatch.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 2,
        in_channels: int = 3,
        base_channels: int = 16,
        first_stride: int = 1,
        drop_rate: float = 0.,
        out_indices: Union[Sequence[int], int] = (2, ),
        conv_bias: bool = True,
        conv_cfg: Optional[dict] = None,
        norm_cfg: dict = dict(type='BN', momentum=0.001, eps=0.001),
        act_cfg: dict = dict(type='LeakyReLU', negative_slope=0.1),
        init_cfg: Optional[Union[dict, list]] = [
            dict(
                type='Kaiming',
                layer='Conv2d',
                mode='fan_out',
                nonlinearity='leaky_relu'),
            dict(
                type='Constant',
                val=1,
                bias=0,
                layer=['_BatchNorm', 'GroupNorm'])
        ]
    ) -> None:
        super().__init__(init_cfg)
        if not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError('`depth` must be an int >= 10 with '
                             f'(depth - 4) % 6 == 0, but got {depth!r}')
        if not isinstance(widen_factor, int) or widen_factor < 1:
            raise ValueError('`widen_factor` must be a positive int, but got '
                             f'{widen_factor!r}')
        if not 0 <= drop_rate < 1:
            raise ValueError(
                f'`drop_rate` must be in [0, 1), but got {drop_rate!r}')
        if isinstance(out_indices, int):
            out_indices = [out_indices]
        out_indices = [i + 3 if i < 0 else i for i in out_indices]
        if not out_indices or any(i not in (0, 1, 2) for i in out_indices):
            raise ValueError('`out_indices` must index the groups 0, 1, 2 '
                             f'(or -3..-1), but got {out_indices!r}')
        self.depth = depth
        self.widen_factor = widen_factor
        self.out_indices = sorted(out_indices)
        num_blocks = (depth - 4) // 6
        channels = [base_channels * widen_factor * m for m in (1, 2, 4)]
        self.stem = build_conv_layer(
            conv_cfg,
            in_channels,
            base_channels,
            kernel_size=3,
            padding=1,
            bias=conv_bias)
        self.groups = nn.ModuleList()
        group_in = base_channels
        for index, (width,
                    stride) in enumerate(zip(channels, (first_stride, 2, 2))):
            blocks = [
                WideBasicBlock(
                    group_in if i == 0 else width,
                    width,
                    stride=stride if i == 0 else 1,
                    drop_rate=drop_rate,
                    activate_before_residual=(index == 0 and i == 0),
                    conv_bias=conv_bias,
                    conv_cfg=conv_cfg,
                    norm_cfg=norm_cfg,
                    act_cfg=act_cfg) for i in range(num_blocks)
            ]
            self.groups.append(nn.Sequential(*blocks))
            group_in = width
        self.out_norm = build_norm_layer(norm_cfg, channels[-1])[1]
        self.out_act = build_activation_layer(act_cfg)
        self.out_channels = channels[-1]

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Return the feature maps of the groups in ``out_indices``."""
        x = self.stem(x)
        outs = []
        for index, group in enumerate(self.groups):
            x = group(x)
            if index == len(self.groups) - 1:
                x = self.out_act(self.out_norm(x))
            if index in self.out_indices:
                outs.append(x)
            if index == self.out_indices[-1]:
                break
        return tuple(outs)
