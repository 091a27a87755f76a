"""Which encoder the MoCo v2 linear probe evaluates: the query encoder (the
student, mmpretrain's ``backbone``) by default, as official MoCo v2 and
mmpretrain's reported number do; the key encoder (the teacher,
``encoder_k``) only when its prefix is chosen."""
import importlib.util
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import MODELS

from conftest import REPO_ROOT

PROBE = osp.join(REPO_ROOT, 'configs', 'mocov2', 'benchmarks',
                 'resnet50_8xb32-linear-steplr-100e_in1k.py')
KEY_PREFIX = 'encoder_k.module.0.'


def _extract_backbone_tool():
    path = osp.join(REPO_ROOT, 'tools', 'model_converters',
                    'extract_backbone.py')
    spec = importlib.util.spec_from_file_location('extract_backbone', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _resnet18_state(seed):
    torch.manual_seed(seed)
    backbone = MODELS.build(dict(type='ResNet', depth=18))
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
    return backbone.state_dict()


@pytest.fixture
def mocov2_checkpoint(tmp_path):
    """A MoCo v2 pretraining checkpoint laid out as mmpretrain's ``MoCo``
    saves it: the query encoder under ``backbone.`` / ``neck.``, the key
    encoder (an averaged ``Sequential(backbone, neck)``) under
    ``encoder_k.module.{0,1}.`` and ``encoder_k.steps``; the two encoders
    hold different weights."""
    query, key = _resnet18_state(0), _resnet18_state(1)
    state = {f'backbone.{k}': v for k, v in query.items()}
    state.update({f'{KEY_PREFIX}{k}': v for k, v in key.items()})
    state['neck.mlp.0.weight'] = torch.zeros(4, 512)
    state['encoder_k.module.1.mlp.0.weight'] = torch.ones(4, 512)
    state['encoder_k.steps'] = torch.tensor(10)
    state['queue'] = torch.zeros(4, 16)
    path = str(tmp_path / 'epoch_200.pth')
    torch.save({'state_dict': state, 'meta': {'epoch': 200}}, path)
    return path, query, key


def _probe_backbone(checkpoint, prefix=None):
    """The backbone of the probe config, shrunk to ResNet-18, after its
    ``init_cfg`` has loaded ``checkpoint`` (what ``--cfg-options
    model.backbone.init_cfg.checkpoint=...`` does)."""
    cfg = Config.fromfile(PROBE)
    options = {'model.backbone.init_cfg.checkpoint': checkpoint}
    if prefix is not None:
        options['model.backbone.init_cfg.prefix'] = prefix
    cfg.merge_from_dict(options)
    cfg.model.backbone.depth = 18
    cfg.model.head.in_channels = 512
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.backbone.state_dict()


def _assert_same(loaded, expected):
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, msg=key)


def test_default_prefix_is_the_query_encoder():
    cfg = Config.fromfile(PROBE)
    init_cfg = cfg.model.backbone.init_cfg
    assert init_cfg.type == 'Pretrained'
    assert init_cfg.prefix == 'backbone.'
    # extract_backbone.py finds the student (query encoder) at that prefix
    # and the teacher (key encoder) at the other.
    tool = _extract_backbone_tool()
    state = {'backbone.conv1.weight': 0, f'{KEY_PREFIX}conv1.weight': 0,
             'encoder_k.steps': 0}
    assert tool.backbone_prefix(state, 'student') == ('backbone.', '')
    assert tool.backbone_prefix(state, 'teacher') == (KEY_PREFIX,
                                                      'encoder_k')


def test_pretraining_checkpoint_loads_the_query_encoder(mocov2_checkpoint):
    path, query, key = mocov2_checkpoint
    loaded = _probe_backbone(path)
    _assert_same(loaded, query)
    assert not torch.equal(loaded['conv1.weight'], key['conv1.weight'])


def test_key_encoder_is_an_option(mocov2_checkpoint):
    path, query, key = mocov2_checkpoint
    loaded = _probe_backbone(path, prefix=KEY_PREFIX)
    _assert_same(loaded, key)
    assert not torch.equal(loaded['conv1.weight'], query['conv1.weight'])


@pytest.mark.parametrize('source', ['student', 'teacher'])
def test_extracted_backbones_load_as_named(mocov2_checkpoint, tmp_path,
                                           source):
    """The README's extraction route: the default prefix loads what
    ``--source`` chose."""
    path, query, key = mocov2_checkpoint
    out = str(tmp_path / f'{source}_backbone.pth')
    _extract_backbone_tool().main([path, out, '--source', source])
    _assert_same(_probe_backbone(out), query if source == 'student' else key)
