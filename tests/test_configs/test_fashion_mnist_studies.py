"""The Fashion-MNIST study configs (configs/fixmatch/*fashion-mnist*,
configs/byol/*fashion-mnist*, their base semi_fashion_mnist.py) build and
train 2 iterations on tiny idx files in the real format, read by
mmpretrain's own ``FashionMNIST``; the grey RandAugment works on 28 x 28
arrays."""
import glob
import os.path as osp
import sys

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmpretrain.registry import TRANSFORMS

from conftest import REPO_ROOT, make_fashion_mnist

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'studies'))
import run_study  # noqa: E402

FIXMATCH = sorted(
    glob.glob(osp.join(REPO_ROOT, 'configs', 'fixmatch',
                       '*fashion-mnist*.py')))
BYOL = sorted(
    glob.glob(osp.join(REPO_ROOT, 'configs', 'byol',
                       'byol_*fashion-mnist*.py')))
PROBE = osp.join(REPO_ROOT, 'configs', 'byol', 'benchmarks',
                 'linear-probe_resnet-tiny_fashion-mnist.py')
SEMI = osp.join(REPO_ROOT, 'configs', '_base_', 'datasets',
                'semi_fashion_mnist.py')


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    """30 training images per class (250 labels need 25) and 20 test
    images, 28 x 28 grey."""
    return make_fashion_mnist(str(tmp_path_factory.mktemp('fashion_mnist')))


def _set_data_root(obj, root):
    if isinstance(obj, dict):
        if 'data_root' in obj:
            obj['data_root'] = root
        for value in obj.values():
            _set_data_root(value, root)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _set_data_root(value, root)


def small_cfg(path, data_root, work_dir, options=None):
    cfg = Config.fromfile(path)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        if cfg.get(key):
            _set_data_root(cfg[key], data_root)
            if cfg[key].dataset.get('indices') is not None:
                cfg[key].dataset.indices = None
    # The k-NN monitor's data loaders (a default hook) read the data too.
    _set_data_root(cfg.get('default_hooks', {}), data_root)
    cfg.work_dir = work_dir
    cfg.merge_from_dict(options or {})
    return cfg


def test_config_names_and_count():
    names = [osp.basename(p) for p in FIXMATCH]
    assert len(names) == 10
    for labels in (40, 250):
        for teacher in ('tma', 'se', 'sts'):
            assert (f'fixmatch_wrn10-1_{teacher}_1xb8-mu3-1k_fashion-mnist-'
                    f'{labels}labels.py') in names
        for teacher in ('tma', 'sts'):
            assert (f'fixmatch-mt_wrn10-1_{teacher}_1xb8-mu3-1k_fashion-'
                    f'mnist-{labels}labels.py') in names
    assert len(BYOL) == 3


@pytest.mark.parametrize('path', FIXMATCH, ids=osp.basename)
def test_fixmatch_settings(path):
    cfg = Config.fromfile(path)
    name = osp.basename(path)
    teacher = cfg.model.teacher
    assert teacher.preserve_prob == (0.0 if '_tma_' in name else 0.5)
    assert teacher.momentum == (1.0 if '_se_' in name else 0.01)
    source = cfg.model.semi_train_cfg.pseudo_label_source
    assert source == ('teacher' if name.startswith('fixmatch-mt') else
                      'student')
    labeled, unlabeled = cfg.train_dataloader.dataset.datasets
    assert labeled.num_per_class == (25 if '250labels' in name else 4)
    # mmpretrain's FashionMNIST, through the base config.
    assert labeled.dataset.type == unlabeled.type == 'FashionMNIST'
    assert cfg.val_dataloader.dataset.test_mode is True
    assert cfg.train_cfg.max_iters == 1000
    assert cfg.train_cfg.val_interval == 100
    assert cfg.default_hooks.logger.log_metric_by_epoch is False
    assert cfg.train_dataloader.batch_size == 32
    assert cfg.train_dataloader.sampler.batch_size == 32


def test_grey_randaugment_runs_every_op():
    cfg = Config.fromfile(SEMI)
    rng = np.random.default_rng(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        for policy in cfg.fixmatch_randaug_policies:
            aug = TRANSFORMS.build(
                dict(
                    type='RandAugment',
                    policies=[policy],
                    num_policies=1,
                    magnitude_level=10,
                    total_level=10,
                    magnitude_std='inf',
                    hparams=dict(pad_val=0)))
            img = rng.integers(0, 256, (28, 28), np.uint8)
            out = aug(dict(img=img, img_shape=(28, 28)))
            assert out['img'].shape == (28, 28), policy
            assert out['img'].dtype == np.uint8, policy
        strong = TRANSFORMS.build(
            dict(type='Compose', transforms=cfg.strong_pipeline))
        for _ in range(10):
            out = strong(
                dict(img=rng.integers(0, 256, (28, 28), np.uint8),
                     img_shape=(28, 28), gt_label=1))
            assert out['inputs'].shape == (1, 28, 28)


@pytest.mark.parametrize('path', FIXMATCH, ids=osp.basename)
def test_fixmatch_trains_two_iterations(path, data_root, tmp_path):
    cfg = small_cfg(
        path, data_root, str(tmp_path), {
            'train_cfg.max_iters': 2,
            'train_cfg.val_interval': 2,
            'default_hooks.checkpoint.interval': 2,
            # A study's per-seed options apply.
            **run_study.seed_options(1),
        })
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    assert int(runner.model.teacher.steps) == 2
    assert osp.isfile(osp.join(str(tmp_path), 'iter_2.pth'))
    labeled = runner.train_dataloader.dataset.datasets[0]
    per_class = 25 if '250labels' in path else 4
    assert len(labeled) == 10 * per_class


@pytest.fixture(scope='module')
def byol_checkpoints(data_root, tmp_path_factory):
    """The STS config trained (its TMA and SE twins differ only in the
    hook's settings, which test_byol_settings checks; training all three
    cost a minute of the suite)."""
    out = {}
    for path in BYOL:
        if not path.endswith('_sts.py'):
            continue
        work_dir = str(tmp_path_factory.mktemp('byol'))
        # The configs' 2 epochs (warm-up, then cosine), of one step each.
        cfg = small_cfg(path, data_root, work_dir, {
            'train_dataloader.batch_size': 8,
            'train_dataloader.dataset.indices': 8,
        })
        runner = Runner.from_cfg(cfg)
        runner.train()
        out[osp.basename(path)] = (runner,
                                   osp.join(work_dir, 'epoch_2.pth'))
    return out


def test_byol_trains_two_iterations(byol_checkpoints):
    assert list(byol_checkpoints) == ['byol_resnet-tiny_fashion-mnist_sts.py']
    for name, (runner, ckpt) in byol_checkpoints.items():
        assert runner.iter == 2, name
        assert osp.isfile(ckpt), name


def test_byol_settings():
    for path in BYOL:
        cfg = Config.fromfile(path)
        assert cfg.train_cfg.max_epochs == run_study.BYOL_EPOCHS
        assert cfg.train_dataloader.dataset.type == 'FashionMNIST'
        hook = cfg.custom_hooks[0]
        name = osp.basename(path)
        assert hook.preserve_prob == (0.0 if '_tma' in name else 0.7)
        if '_se' in name:
            assert hook.momentum == 1.0
            assert hook.momentum_schedule == 'constant'


@pytest.mark.parametrize('prefix', ['target_net.module.0.', 'backbone.'])
def test_linear_probe_trains_on_a_byol_backbone(byol_checkpoints, data_root,
                                                tmp_path, prefix):
    _, ckpt = byol_checkpoints['byol_resnet-tiny_fashion-mnist_sts.py']
    cfg = small_cfg(
        PROBE, data_root, str(tmp_path), {
            'train_cfg.max_epochs': 1,
            'train_cfg.val_interval': 1,
            'train_dataloader.batch_size': 8,
            'train_dataloader.dataset.indices': 16,
            'model.backbone.init_cfg.checkpoint': ckpt,
            'model.backbone.init_cfg.prefix': prefix,
        })
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 2
    state = torch.load(ckpt, map_location='cpu')['state_dict']
    key = 'stem.0.weight' if 'stem.0.weight' in {
        k[len(prefix):]
        for k in state if k.startswith(prefix)
    } else 'conv1.weight'
    torch.testing.assert_close(
        runner.model.backbone.state_dict()[key], state[prefix + key])


# ----------------------------------------------------------------------
# The KD study (configs/kd/*fashion-mnist*)
# ----------------------------------------------------------------------
def test_kd_study_runs_every_student_of_every_seed():
    study = run_study.kd_study()
    assert len(study.runs) == 4 * len(run_study.SEEDS)
    assert len({run.name for run in study.runs}) == len(study.runs)
    for run in study.runs:
        for step in run.steps:
            assert osp.isfile(osp.join(REPO_ROOT, step.config)), step.config
        assert run.steps[-1].cfg_options['randomness.seed'] == run.seed
    fixed = [r for r in study.runs if r.group == 'KD, fixed teacher']
    assert all(len(r.steps) == 2 for r in fixed)
    assert fixed[0].steps[1].cfg_options['model.teacher.checkpoint'] == \
        f'{{run_dir}}/teacher/iter_{run_study.KD_STEPS}.pth'


def test_kd_configs_train_two_iterations_each(data_root, tmp_path):
    """Every step of the KD study on tiny data: the teacher, then the four
    students (the fixed-teacher one reads the teacher's checkpoint)."""
    teacher_dir = str(tmp_path / 'teacher')
    options = {
        'train_cfg.max_iters': 2,
        'train_cfg.val_interval': 2,
        'default_hooks.checkpoint.interval': 2,
        'train_dataloader.batch_size': 4,
        'randomness.seed': 1,
    }
    runner = Runner.from_cfg(
        small_cfg(osp.join(REPO_ROOT, run_study.KD_TEACHER), data_root,
                  teacher_dir, options))
    runner.train()
    checkpoint = osp.join(teacher_dir, 'iter_2.pth')
    assert osp.isfile(checkpoint)
    for group, (tag, config) in run_study.KD_STUDENTS.items():
        student_options = dict(options)
        if tag == 'fixed':
            student_options['model.teacher.checkpoint'] = checkpoint
        runner = Runner.from_cfg(
            small_cfg(
                osp.join(REPO_ROOT, run_study.KD_DIR, config), data_root,
                str(tmp_path / tag), student_options))
        runner.train()
        assert runner.iter == 2, group
        scalars = runner.message_hub.log_scalars
        key = 'val/accuracy/top1' if tag == 'none' else \
            'val/student/accuracy/top1'
        assert key in scalars, (group, sorted(scalars))
        if tag != 'none':
            assert 'train/loss_kd' in scalars, group
