"""tools/train.py, tools/test.py and tools/model_converters/
extract_backbone.py, run as a user runs them (subprocesses) on a tiny BYOL
with STS and a tiny ImageNet folder."""
import argparse
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys
from glob import glob

import pytest
import torch
from mmengine.config import Config
from mmengine.fileio import load
from mmpretrain.models import ResNet
from mmpretrain.registry import MODELS

from conftest import REPO_ROOT, BYOL_CFG, small_selfsup_cfg

REPO = REPO_ROOT
TOOLS = osp.join(REPO, 'tools')
LINEAR_PROBE_CFG = \
    'mmpretrain::byol/benchmarks/resnet50_8xb512-linear-coslr-90e_in1k.py'
ITERS_PER_EPOCH = 2  # 8 training images, batch 4


def load_tool(name: str):
    """Import a script of tools/ as a module."""
    path = osp.join(TOOLS, f'{name}.py')
    spec = importlib.util.spec_from_file_location(f'tool_{osp.basename(name)}',
                                                  path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(script: str, *args: str) -> str:
    """Run a Python script of tools/ like a user; return its output."""
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, osp.join(TOOLS, script), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def scalars_of(run_dir: str) -> list:
    """The lines of a run's ``vis_data/scalars.json``."""
    with open(osp.join(run_dir, 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f]


def teacher_backbone(state_dict: dict) -> dict:
    prefix = 'target_net.module.0.'
    return {
        k[len(prefix):]: v
        for k, v in state_dict.items() if k.startswith(prefix)
    }


@pytest.fixture(autouse=True)
def restore_local_rank(monkeypatch):
    """The tools' ``parse_args`` set ``LOCAL_RANK``; undo it after a test."""
    monkeypatch.setenv('LOCAL_RANK', '0')


@pytest.fixture(scope='module')
def byol_config(tmp_path_factory, imagenet_root):
    """A 1-epoch BYOL + STS config file. It has no ``custom_imports``: the
    tools must register mmsts's modules themselves."""
    root = tmp_path_factory.mktemp('byol_cfg')
    cfg = small_selfsup_cfg(
        BYOL_CFG,
        str(root / 'unused'),
        imagenet_root,
        max_epochs=1,
        hooks=[
            dict(
                type='SpatialTemporalSmoothingHook',
                preserve_prob=0.7,
                log_interval=1)
        ])
    path = str(root / 'byol_sts.py')
    cfg.dump(path)
    return path


@pytest.fixture(scope='module')
def trained(byol_config, tmp_path_factory):
    """Train 1 epoch, then ``--resume`` (auto) up to 2 epochs."""
    work_dir = str(tmp_path_factory.mktemp('byol_work_dir'))
    run_tool('train.py', byol_config, '--work-dir', work_dir)
    first_runs = set(glob(osp.join(work_dir, '2*')))
    run_tool('train.py', byol_config, '--work-dir', work_dir, '--resume',
             '--cfg-options', 'train_cfg.max_epochs=2')
    (second_run, ) = set(glob(osp.join(work_dir, '2*'))) - first_runs
    return dict(
        work_dir=work_dir, first_runs=first_runs, second_run=second_run)


def test_train_registers_mmsts_and_resume_continues(trained):
    work_dir = trained['work_dir']
    (first_run, ) = trained['first_runs']
    first = scalars_of(first_run)
    # The STS hook ran (the config does not import mmsts, train.py does):
    # the teacher reports from the first update on, and its fraction of
    # updated fragments once it has drawn some (after the initial copy).
    assert 'sts/target_net/nonfinite_steps' in first[0]
    assert 'sts/target_net/update_fraction' not in first[0]
    assert 'sts/target_net/update_fraction' in first[1]
    assert [s['iter'] for s in first] == list(range(1, ITERS_PER_EPOCH + 1))

    # The resumed run trained epoch 2 only, continuing the iteration count.
    second = scalars_of(trained['second_run'])
    assert [s['iter'] for s in second
            ] == list(range(ITERS_PER_EPOCH + 1, 2 * ITERS_PER_EPOCH + 1))
    assert {s['epoch'] for s in second} == {2}

    ckpt1 = torch.load(osp.join(work_dir, 'epoch_1.pth'), map_location='cpu')
    ckpt2 = torch.load(osp.join(work_dir, 'epoch_2.pth'), map_location='cpu')
    assert ckpt2['meta']['epoch'] == 2
    assert ckpt2['meta']['iter'] == 2 * ITERS_PER_EPOCH
    # The teacher resumed from epoch 1 (its update count continued) and
    # kept being smoothed.
    assert int(ckpt1['state_dict']['target_net.steps']) == ITERS_PER_EPOCH
    assert int(ckpt2['state_dict']['target_net.steps']) == \
        2 * ITERS_PER_EPOCH
    t1 = teacher_backbone(ckpt1['state_dict'])
    t2 = teacher_backbone(ckpt2['state_dict'])
    assert any(not torch.equal(t1[k], t2[k]) for k in t1)


@pytest.fixture(scope='module')
def extracted(trained, tmp_path_factory):
    """Teacher and student backbones of the epoch-2 checkpoint."""
    out_dir = tmp_path_factory.mktemp('extracted')
    ckpt = osp.join(trained['work_dir'], 'epoch_2.pth')
    extract = load_tool('model_converters/extract_backbone')
    paths = {}
    for source in ('teacher', 'student'):
        paths[source] = str(out_dir / f'{source}.pth')
        extract.main([ckpt, paths[source], '--source', source])
    return dict(paths, checkpoint=ckpt)


def test_extract_backbone_loads_strictly(extracted):
    full = torch.load(extracted['checkpoint'], map_location='cpu')
    sources = dict(
        teacher=teacher_backbone(full['state_dict']),
        student={
            k[len('backbone.'):]: v
            for k, v in full['state_dict'].items() if k.startswith('backbone.')
        })
    loaded = {}
    for source, expected in sources.items():
        path = extracted[source]
        # Plain tensors and Python values only: loads weights-only anywhere.
        assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
        out = torch.load(path, weights_only=True)
        assert out['meta']['source'] == source
        assert all(k.startswith('backbone.') for k in out['state_dict'])
        backbone = ResNet(depth=18)
        backbone.load_state_dict(
            {
                k[len('backbone.'):]: v
                for k, v in out['state_dict'].items()
            },
            strict=True)
        state = backbone.state_dict()
        assert all(torch.equal(state[k], expected[k]) for k in expected)
        loaded[source] = state
    assert out['meta']['epoch'] == 2
    teacher_meta = torch.load(extracted['teacher'])['meta']
    assert teacher_meta['teacher'] == 'target_net'
    assert teacher_meta['teacher_steps'] == 2 * ITERS_PER_EPOCH
    assert teacher_meta['sts']['target_net']['settings'][
        'preserve_prob'] == 0.7
    # The teacher is not the student.
    assert any(not torch.equal(loaded['teacher'][k], loaded['student'][k])
               for k in loaded['teacher'] if 'conv' in k)


def linear_probe_cfg(tmp_path, data_root: str, backbone_ckpt: str) -> Config:
    """mmpretrain's BYOL linear-probe benchmark (as a user inherits it),
    shrunk to ResNet-18, 2 classes and 32-pixel images."""
    child = tmp_path / 'linear_probe.py'
    child.write_text(f'_base_ = {LINEAR_PROBE_CFG!r}\n')
    cfg = Config.fromfile(str(child))
    cfg.model.backbone.depth = 18
    cfg.model.backbone.init_cfg.checkpoint = backbone_ckpt
    cfg.model.head.in_channels = 512
    cfg.model.head.num_classes = 2
    cfg.model.head.topk = (1, )
    cfg.test_dataloader.dataset.data_root = data_root
    cfg.test_dataloader.dataset.pipeline[1].scale = 32
    cfg.test_dataloader.dataset.pipeline[2].crop_size = 32
    cfg.test_dataloader.batch_size = 4
    cfg.test_dataloader.num_workers = 0
    cfg.test_dataloader.persistent_workers = False
    cfg.test_evaluator = dict(type='Accuracy', topk=(1, ))
    return cfg


def test_linear_probe_config_loads_the_teacher(extracted, tmp_path,
                                               imagenet_root):
    """The benchmark's ``init_cfg=dict(type='Pretrained', prefix=
    'backbone.')`` loads the extracted teacher as it is."""
    cfg = linear_probe_cfg(tmp_path, imagenet_root, extracted['teacher'])
    model = MODELS.build(cfg.model)
    model.init_weights()
    expected = torch.load(extracted['teacher'])['state_dict']
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_test_py_evaluates_a_checkpoint(extracted, tmp_path, imagenet_root):
    cfg = linear_probe_cfg(tmp_path, imagenet_root, extracted['teacher'])
    cfg_path = str(tmp_path / 'probe.py')
    cfg.dump(cfg_path)
    # A classifier whose head says "class 1" whatever the image: if test.py
    # loads it, every prediction is 1 with a known score.
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        model.head.fc.weight.zero_()
        model.head.fc.bias.copy_(torch.tensor([0., 3.]))
    ckpt = str(tmp_path / 'classifier.pth')
    torch.save(dict(state_dict=model.state_dict()), ckpt)

    preds = str(tmp_path / 'preds.pkl')
    # In-process (a subprocess costs the imports again): what the command
    # line `python tools/test.py CFG CKPT --work-dir DIR --out PKL` runs.
    metrics = load_tool('test').main([
        cfg_path, ckpt, '--work-dir',
        str(tmp_path / 'test_work_dir'), '--out', preds
    ])
    results = load(preds)
    assert len(results) == 8  # the val split
    expected = torch.softmax(torch.tensor([0., 3.]), 0)
    for result in results:
        assert int(result['pred_label']) == 1
        assert torch.allclose(result['pred_score'], expected, atol=1e-6)
    # Half of the val images are of class 1.
    assert metrics['accuracy/top1'] == pytest.approx(50.0)


def test_train_merge_args(tmp_path):
    train = load_tool('train')
    cfg_file = tmp_path / 'cfg.py'
    cfg_file.write_text(
        f'_base_ = {BYOL_CFG!r}\n'
        'train_dataloader = dict(num_workers=0, persistent_workers=False)\n')

    def merged(*argv):
        args = train.parse_args([str(cfg_file), *argv])
        return train.merge_args(Config.fromfile(str(cfg_file)), args)

    cfg = merged()
    assert cfg.work_dir == osp.join('./work_dirs', 'cfg')
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.launcher == 'none' and not cfg.get('resume')
    assert '_scope_' not in cfg.train_dataloader.collate_fn
    assert cfg.train_dataloader.persistent_workers is False

    cfg = merged('--resume')
    assert cfg.resume is True and cfg.load_from is None
    cfg = merged('--resume', 'a/epoch_3.pth', '--work-dir', 'w', '--amp',
                 '--auto-scale-lr', '--no-pin-memory', '--cfg-options',
                 'train_dataloader.num_workers=2')
    assert cfg.resume is True and cfg.load_from == 'a/epoch_3.pth'
    assert cfg.work_dir == 'w'
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    assert cfg.auto_scale_lr.enable is True
    assert cfg.train_dataloader.pin_memory is False
    assert cfg.train_dataloader.num_workers == 2

    cfg = Config.fromfile(str(cfg_file))
    cfg.auto_scale_lr = None
    args = train.parse_args([str(cfg_file), '--auto-scale-lr'])
    with pytest.raises(ValueError, match='auto_scale_lr=None'):
        train.merge_args(cfg, args)


def test_test_py_refuses_a_pretraining_config(tmp_path):
    test = load_tool('test')
    cfg_file = tmp_path / 'byol.py'
    cfg_file.write_text(f'_base_ = {BYOL_CFG!r}\n')
    args = test.parse_args([str(cfg_file), 'ckpt.pth'])
    with pytest.raises(ValueError, match='`test_dataloader` is missing'):
        test.merge_args(Config.fromfile(str(cfg_file)), args)


@pytest.mark.parametrize('script,nargs', [('dist_train.sh', 2),
                                          ('dist_test.sh', 3),
                                          ('slurm_train.sh', 4),
                                          ('slurm_test.sh', 4)])
def test_shell_scripts_print_usage(script, nargs):
    proc = subprocess.run(
        ['bash', osp.join(TOOLS, script)] + ['x'] * (nargs - 1),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith('usage: ')


def test_dist_train_sh_checks_gpus():
    proc = subprocess.run(
        ['bash', osp.join(TOOLS, 'dist_train.sh'), 'cfg.py', 'two'],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True)
    assert proc.returncode == 2
    assert "GPUS must be a positive integer, got 'two'" in proc.stderr


def test_parse_args_sets_local_rank(monkeypatch):
    monkeypatch.delenv('LOCAL_RANK')
    train = load_tool('train')
    args = train.parse_args(['cfg.py', '--local-rank', '3'])
    assert isinstance(args, argparse.Namespace) and args.local_rank == 3
    assert os.environ['LOCAL_RANK'] == '3'
