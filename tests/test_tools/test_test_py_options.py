"""tools/test.py's ``--tta``, ``--show-dir``/``--show`` (mmpretrain's
options), on a tiny digits classifier."""
import glob
import importlib.util
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.fileio import load
from mmpretrain.registry import MODELS

from conftest import REPO_ROOT


def _load_tool():
    path = osp.join(REPO_ROOT, 'tools', 'test.py')
    spec = importlib.util.spec_from_file_location('mmsts_test_tool', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


test_tool = _load_tool()

MODEL = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNet_CIFAR',
        depth=18,
        stem_channels=8,
        base_channels=8,
        norm_cfg=dict(type='BN')),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(type='CrossEntropyLoss'),
        topk=(1, )))


def _config(tmp_path):
    """A config file and a checkpoint of a tiny digits classifier."""
    cfg_path = tmp_path / 'digits_classifier.py'
    cfg_path.write_text(f"""
_base_ = 'mmpretrain::_base_/default_runtime.py'
custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)
data_preprocessor = dict(num_classes=10, mean=[78.0] * 3, std=[95.7] * 3,
                         to_rgb=False)
model = {MODEL!r}
test_dataloader = dict(
    batch_size=100, num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='Digits', split='test', pipeline=[
        dict(type='Resize', scale=16), dict(type='PackInputs')]))
test_evaluator = dict(type='Accuracy', topk=(1, ))
test_cfg = dict()
log_level = 'WARNING'
""")
    torch.manual_seed(0)
    model = MODELS.build(MODEL)
    ckpt = str(tmp_path / 'classifier.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    return str(cfg_path), ckpt


def test_tta_wraps_the_model_and_the_pipeline(tmp_path):
    cfg_path, ckpt = _config(tmp_path)
    args = test_tool.parse_args([cfg_path, ckpt, '--tta'])
    cfg = test_tool.merge_args(Config.fromfile(cfg_path), args)
    assert cfg.model.type == 'mmpretrain.AverageClsScoreTTA'
    assert cfg.model.module.type == 'ImageClassifier'
    pipeline = cfg.test_dataloader.dataset.pipeline
    assert pipeline[0].type == 'Resize'
    assert pipeline[-1].type == 'TestTimeAug'
    flips, pack = pipeline[-1].transforms
    assert [t['prob'] for t in flips] == [1., 0.]
    assert pack[0]['type'] == 'PackInputs'


def test_tta_keeps_the_configs_own(tmp_path):
    cfg_path, ckpt = _config(tmp_path)
    cfg = Config.fromfile(cfg_path)
    cfg.tta_model = dict(type='MyTTA')
    cfg.tta_pipeline = [dict(type='PackInputs')]
    cfg = test_tool.merge_args(cfg,
                               test_tool.parse_args([cfg_path, ckpt, '--tta']))
    assert cfg.model.type == 'MyTTA'
    assert cfg.test_dataloader.dataset.pipeline == [dict(type='PackInputs')]


def test_show_options_set_the_visualization_hook(tmp_path):
    cfg_path, ckpt = _config(tmp_path)
    args = test_tool.parse_args([
        cfg_path, ckpt, '--show-dir', 'vis', '--interval', '7', '--wait-time',
        '0.5'
    ])
    cfg = test_tool.merge_args(Config.fromfile(cfg_path), args)
    hook = cfg.default_hooks.visualization
    assert (hook.enable, hook.show, hook.out_dir, hook.interval,
            hook.wait_time) == (True, False, 'vis', 7, 0.5)
    args = test_tool.parse_args([cfg_path, ckpt, '--show'])
    hook = test_tool.merge_args(Config.fromfile(cfg_path),
                                args).default_hooks.visualization
    assert hook.enable and hook.show and hook.out_dir is None
    # Without the options the hook stays as the config has it (off).
    cfg = test_tool.merge_args(
        Config.fromfile(cfg_path), test_tool.parse_args([cfg_path, ckpt]))
    assert not cfg.default_hooks.visualization.enable

    cfg = Config.fromfile(cfg_path)
    del cfg.default_hooks['visualization']
    with pytest.raises(ValueError, match='visualization'):
        test_tool.merge_args(cfg, args)


def test_tta_and_show_dir_run(tmp_path):
    """``tools/test.py CFG CKPT --tta``: the flip-averaged scores are
    evaluated; ``--show-dir vis``: the images are written. (mmpretrain's
    VisualizationHook cannot draw TTA batches, so not both at once.)"""
    cfg_path, ckpt = _config(tmp_path)
    work_dir = str(tmp_path / 'work')
    vis = str(tmp_path / 'vis')
    plain_out, tta_out = str(tmp_path / 'plain.pkl'), str(tmp_path / 'tta.pkl')
    test_tool.main([
        cfg_path, ckpt, '--work-dir', work_dir, '--show-dir', vis,
        '--interval', '100', '--out', plain_out
    ])
    images = glob.glob(osp.join(vis, '*.png'))
    assert len(images) == 5  # 500 test digits, one in 100
    tta = test_tool.main(
        [cfg_path, ckpt, '--work-dir', work_dir, '--tta', '--out', tta_out])
    assert 0 <= tta['accuracy/top1'] <= 100
    # The scores are averaged with those of the flipped images.
    plain_scores = torch.stack([p['pred_score'] for p in load(plain_out)])
    tta_scores = torch.stack([p['pred_score'] for p in load(tta_out)])
    assert plain_scores.shape == tta_scores.shape == (500, 10)
    assert not torch.allclose(plain_scores, tta_scores)
