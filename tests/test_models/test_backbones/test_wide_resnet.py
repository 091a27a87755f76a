"""CIFAR wide residual networks with FixMatch's definitions."""
import pytest
import torch
import torch.nn as nn
from mmpretrain.registry import MODELS

import mmsts  # noqa: F401  (registers the modules)
from mmsts.models.backbones import WideBasicBlock, WideResNet


def expected_num_params(depth, k, num_classes, conv_bias=True):
    """WRN-depth-k parameter count, from the architecture's definition."""
    n = (depth - 4) // 6
    bias = int(conv_bias)
    total = 3 * 16 * 9 + 16 * bias  # stem
    c_in = 16
    for width in (16 * k, 32 * k, 64 * k):
        for i in range(n):
            cin = c_in if i == 0 else width
            total += 2 * cin  # norm1
            total += cin * width * 9 + width * bias  # conv1
            total += 2 * width  # norm2
            total += width * width * 9 + width * bias  # conv2
            if cin != width:
                total += cin * width + width * bias  # projection shortcut
        c_in = width
    total += 2 * 64 * k  # final norm
    total += 64 * k * num_classes + num_classes  # linear head
    return total


def classifier(depth, k, num_classes, **kwargs):
    return MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(
                type='WideResNet', depth=depth, widen_factor=k, **kwargs),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(
                type='LinearClsHead',
                num_classes=num_classes,
                in_channels=64 * k)))


def num_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('k,num_classes,millions', [(2, 10, 1.47),
                                                    (8, 100, 23.4)])
@pytest.mark.parametrize('conv_bias', [True, False])
def test_parameter_counts_match_fixmatch(k, num_classes, millions, conv_bias):
    model = classifier(28, k, num_classes, conv_bias=conv_bias)
    count = num_params(model)
    assert count == expected_num_params(28, k, num_classes, conv_bias)
    # FixMatch's WRN-28-2 has ~1.47 M parameters, its WRN-28-8 ~23.4 M.
    assert round(count / 1e6, 2 if k == 2 else 1) == millions


def test_fixmatch_layer_choices():
    backbone = WideResNet(depth=28, widen_factor=2)
    blocks = [m for m in backbone.modules() if isinstance(m, WideBasicBlock)]
    assert len(blocks) == 12  # (28 - 4) / 6 = 4 blocks per group
    norms = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == 2 * 12 + 1
    assert all(m.momentum == 0.001 and m.eps == 0.001 for m in norms)
    acts = [m for m in backbone.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 2 * 12 + 1
    assert all(m.negative_slope == 0.1 for m in acts)
    assert [b.activate_before_residual
            for b in blocks] == [True] + [False] * 11
    assert [b.shortcut is not None
            for b in blocks] == [True, False, False, False] * 3


def test_feature_shapes():
    backbone = WideResNet(depth=10, widen_factor=2, out_indices=(0, 1, 2))
    outs = backbone(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 32, 32), (2, 64, 16, 16),
                                              (2, 128, 8, 8)]
    last = WideResNet(depth=10, widen_factor=2, out_indices=-1)
    assert len(last(torch.randn(1, 3, 32, 32))) == 1
    model = classifier(10, 1, 7)
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 7)


def test_first_shortcut_sees_the_preactivated_input():
    backbone = WideResNet(depth=10, widen_factor=2)
    backbone.eval()
    seen = {}
    for name in ('groups.0.0', 'groups.1.0'):
        block = backbone.get_submodule(name)
        block.register_forward_hook(
            lambda m, args, out, name=name: seen[name].update(x=args[0]))
        block.shortcut.register_forward_hook(
            lambda m, args, out, name=name: seen.setdefault(name, {}).update(
                shortcut_in=args[0]))
    with torch.no_grad():
        backbone(torch.randn(2, 3, 16, 16))
        first = backbone.get_submodule('groups.0.0')
        x = seen['groups.0.0']['x']
        # The first block's projection shortcut gets act(norm(x)) ...
        torch.testing.assert_close(seen['groups.0.0']['shortcut_in'],
                                   first.act1(first.norm1(x)))
        assert not torch.allclose(seen['groups.0.0']['shortcut_in'], x)
        # ... the other groups' ones get the raw input.
        assert torch.equal(seen['groups.1.0']['shortcut_in'],
                           seen['groups.1.0']['x'])


def test_init_follows_fixmatch():
    backbone = WideResNet(depth=28, widen_factor=2)
    backbone.init_weights()
    conv = backbone.get_submodule('groups.2.1.conv1')
    fan_out = conv.out_channels * 9
    std = conv.weight.std().item()
    assert std == pytest.approx((2 / fan_out)**0.5, rel=0.1)
    assert torch.all(conv.bias == 0)
    norm = backbone.get_submodule('groups.2.1.norm1')
    assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_dropout_only_in_training():
    backbone = WideResNet(depth=10, widen_factor=1, drop_rate=0.3)
    x = torch.randn(2, 3, 16, 16)
    backbone.eval()
    assert torch.equal(backbone(x)[0], backbone(x)[0])
    backbone.train()
    torch.manual_seed(0)
    a = backbone(x)[0]
    assert not torch.equal(a, backbone(x)[0])


@pytest.mark.parametrize('kwargs,match', [
    (dict(depth=27), 'depth.*27'),
    (dict(depth=4), 'depth.*4'),
    (dict(widen_factor=0), 'widen_factor.*0'),
    (dict(drop_rate=1.0), 'drop_rate.*1.0'),
    (dict(out_indices=(3, )), r'out_indices.*\[3\]'),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WideResNet(**kwargs)
