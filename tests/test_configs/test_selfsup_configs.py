"""The BYOL / MoCo v2 recipes in ``configs/``: their settings, and that each
one builds and trains (pretraining) or loads a backbone, trains and tests
(linear probes) on CPU with a tiny ImageNet folder."""
import copy
import glob
import importlib.util
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmengine.utils import get_installed_path
from mmpretrain.registry import MODELS

from mmsts.models import SpatialTemporalSmoothing
from mmsts.smoothing import ConstantMomentum, CosineMomentum

from conftest import REPO_ROOT, _set_key, small_selfsup_cfg

REPO = REPO_ROOT
# The recipes (configs/byol/README.md explains the naming scheme).
BYOL_STS = 'byol_resnet50_sts_8xb32-coslr-200e_in1k.py'
BYOL_TMA = 'byol_resnet50_tma_8xb32-coslr-200e_in1k.py'
BYOL_SE = 'byol_resnet50_se_8xb32-coslr-200e_in1k.py'
BYOL_STS_OFFICIAL = 'byol_resnet50_sts-official_8xb32-coslr-200e_in1k.py'
BYOL_TMA_OFFICIAL = 'byol_resnet50_tma-official_8xb32-coslr-200e_in1k.py'
BYOL_SE_OFFICIAL = 'byol_resnet50_se-official_8xb32-coslr-200e_in1k.py'
MOCOV2_STS = 'mocov2_resnet50_sts_8xb32-coslr-200e_in1k.py'
MOCOV2_TMA = 'mocov2_resnet50_tma_8xb32-coslr-200e_in1k.py'
MOCOV2_SE = 'mocov2_resnet50_se_8xb32-coslr-200e_in1k.py'
METHODS = ('byol', 'mocov2')
# The small-scale demo/study configs (digits, Fashion-MNIST) use other data
# sets and have their own tests.
SMALL_DATA = ('digits', 'fashion-mnist')


def _imagenet_recipe(path: str) -> bool:
    return not any(data in osp.basename(path) for data in SMALL_DATA)


PRETRAIN_CONFIGS = sorted(
    p for m in METHODS
    for p in glob.glob(osp.join(REPO, 'configs', m, '*.py'))
    if _imagenet_recipe(p))
PROBE_CONFIGS = sorted(
    p for m in METHODS
    for p in glob.glob(osp.join(REPO, 'configs', m, 'benchmarks', '*.py'))
    # The official STS probe differs from mmpretrain's benchmark on
    # purpose; test_byol_official_configs.py covers it.
    if _imagenet_recipe(p) and 'sts-official' not in osp.basename(p))
# mmpretrain's naming scheme with the teacher update as a field of its own
# (as configs/fixmatch/ has it): {algorithm}_{backbone}_{teacher}_{gpus}x
# b{batch per GPU}-{schedule}-{epochs}e_{data}.py.
NAME_SCHEME = re.compile(r'(?P<algorithm>byol|mocov2)_(?P<backbone>resnet50)_'
                         r'(?P<teacher>sts|tma|se)(?P<official>-official)?_'
                         r'(?P<gpus>\d+)xb(?P<batch>\d+)-coslr-'
                         r'(?P<epochs>\d+)e_in1k\.py')

# mmpretrain's configs that ours inherit (paths under its configs/).
MMPRETRAIN_BASE = {
    'byol': 'byol/byol_resnet50_16xb256-coslr-200e_in1k.py',
    'mocov2': 'mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py',
}
TEACHER = {'byol': 'target_net', 'mocov2': 'encoder_k'}

# What each recipe promises (see its header and configs/*/README.md).
# `schedule`: the momentum schedule the STS teacher must end up with,
# (class, momentum, end_momentum or None).
BYOL_COSINE = (CosineMomentum, 0.01, 0.0)
EXPECTED = {
    BYOL_STS:
    dict(preserve_prob=0.7, schedule=BYOL_COSINE, optimizer='LARS'),
    BYOL_TMA:
    dict(preserve_prob=0.0, schedule=BYOL_COSINE, optimizer='LARS'),
    BYOL_SE:
    dict(
        preserve_prob=0.7,
        schedule=(ConstantMomentum, 1.0, None),
        optimizer='LARS'),
    BYOL_STS_OFFICIAL:
    dict(preserve_prob=0.7, schedule=BYOL_COSINE, optimizer='SGD', lr=0.05),
    BYOL_TMA_OFFICIAL:
    dict(preserve_prob=0.0, schedule=BYOL_COSINE, optimizer='SGD', lr=0.05),
    BYOL_SE_OFFICIAL:
    dict(
        preserve_prob=0.7,
        schedule=(ConstantMomentum, 1.0, None),
        optimizer='SGD',
        lr=0.05),
    MOCOV2_STS:
    dict(
        preserve_prob=0.5,
        schedule=(ConstantMomentum, 0.001, None),
        optimizer='SGD'),
    MOCOV2_TMA:
    dict(
        preserve_prob=0.0,
        schedule=(ConstantMomentum, 0.001, None),
        optimizer='SGD'),
    MOCOV2_SE:
    dict(
        preserve_prob=0.5,
        schedule=(ConstantMomentum, 1.0, None),
        optimizer='SGD'),
}
# Keys in which a controlled baseline may differ from its STS config.
BASELINE_OF = {
    BYOL_TMA: (BYOL_STS, {'custom_hooks'}),
    BYOL_SE: (BYOL_STS, {'custom_hooks'}),
    BYOL_STS_OFFICIAL:
    (BYOL_STS,
     {'custom_hooks', 'optim_wrapper', 'param_scheduler', 'train_dataloader'}),
    BYOL_TMA_OFFICIAL:
    (BYOL_STS_OFFICIAL, {'custom_hooks'}),
    BYOL_SE_OFFICIAL:
    (BYOL_STS_OFFICIAL, {'custom_hooks'}),
    MOCOV2_TMA: (MOCOV2_STS, {'custom_hooks'}),
    MOCOV2_SE: (MOCOV2_STS, {'custom_hooks'}),
}
# Linear probes: mmpretrain's own benchmark each inherits.
PROBE_BASE = {
    'byol': 'byol/benchmarks/resnet50_8xb512-linear-coslr-90e_in1k.py',
    'mocov2': 'mocov2/benchmarks/resnet50_8xb32-linear-steplr-100e_in1k.py',
}


def _mmpretrain_config(rel_path: str) -> Config:
    return Config.fromfile(
        osp.join(
            get_installed_path('mmpretrain'), '.mim', 'configs', rel_path))


def _unscoped(obj):
    """``obj`` as plain containers, without the ``_scope_`` keys MMEngine
    adds to dicts inherited from ``mmpretrain::`` configs."""
    if isinstance(obj, dict):
        return {k: _unscoped(v) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_unscoped(v) for v in obj)
    return obj


def _method(path: str) -> str:
    return osp.relpath(path, osp.join(REPO, 'configs')).split(osp.sep)[0]


def _ids(paths):
    return [osp.relpath(p, osp.join(REPO, 'configs')) for p in paths]


def _documented_gpus(path: str) -> int:
    """The GPU count of the `dist_train.sh` command in the config's header:
    the effective batch size is what that command runs."""
    with open(path) as f:
        header = ' '.join(
            line.lstrip('#').rstrip('\\\n') for line in f
            if line.startswith('#'))
    found = re.findall(r'dist_train\.sh\s+(\S+\.py)\s+(\d+)', header)
    assert len(found) == 1, f'{path}: expected one dist_train.sh command'
    (cfg_path, gpus), = found
    assert osp.join(REPO, cfg_path) == path, \
        f'{path} documents the command of {cfg_path}'
    return int(gpus)


def _sts_hooks(cfg):
    return [
        h for h in cfg.get('custom_hooks', [])
        if h['type'] == 'SpatialTemporalSmoothingHook'
    ]


def _bare(model):
    return model.module if is_model_wrapper(model) else model


def test_every_config_is_covered():
    assert PRETRAIN_CONFIGS and PROBE_CONFIGS
    names = {osp.basename(p) for p in PRETRAIN_CONFIGS}
    assert names == set(EXPECTED), \
        'add the expectations of new configs to EXPECTED'
    for path in PROBE_CONFIGS:
        assert _method(path) in PROBE_BASE


@pytest.mark.parametrize('path', PRETRAIN_CONFIGS, ids=_ids(PRETRAIN_CONFIGS))
def test_pretrain_config_name_follows_the_scheme(path):
    """The name says what the config runs: algorithm, backbone, teacher
    update, GPUs x images per GPU of its documented command, epochs."""
    name, method = osp.basename(path), _method(path)
    match = NAME_SCHEME.fullmatch(name)
    assert match, f'{name} does not follow {NAME_SCHEME.pattern}'
    cfg = Config.fromfile(path)
    assert match['algorithm'] == method
    assert cfg.model.type == {'byol': 'BYOL', 'mocov2': 'MoCo'}[method]
    assert cfg.model.backbone.type == 'ResNet'
    assert cfg.model.backbone.depth == 50
    assert int(match['gpus']) == _documented_gpus(path)
    assert int(match['batch']) == cfg.train_dataloader.batch_size
    assert int(match['epochs']) == cfg.train_cfg.max_epochs
    teacher = match['teacher']
    (hook, ) = _sts_hooks(cfg)
    if teacher == 'tma':
        assert hook.preserve_prob == 0
    else:
        assert hook.preserve_prob > 0
        assert (hook.get('momentum') == 1.0) == (teacher == 'se')
    # `-official`: the official STS code's recipe (SGD instead of BYOL's
    # LARS; the teacher keeps its own BN statistics).
    assert bool(match['official']) == (hook.get('buffers') == 'keep')
    if match['official']:
        assert cfg.optim_wrapper.optimizer.type == 'SGD'


@pytest.mark.parametrize('path', PRETRAIN_CONFIGS, ids=_ids(PRETRAIN_CONFIGS))
def test_pretrain_config_settings(path):
    name, method = osp.basename(path), _method(path)
    expected = EXPECTED[name]
    cfg = Config.fromfile(path)
    base = _mmpretrain_config(MMPRETRAIN_BASE[method])

    # Safe outside tools/train.py: mmsts imported, collate_fn without _scope_.
    assert 'mmsts' in cfg.custom_imports.imports
    assert cfg.custom_imports.allow_failed_imports is False
    assert dict(
        cfg.train_dataloader.collate_fn) == dict(type='default_collate')

    # 8 GPUs x 32 = 256 images per step (the paper's setting), and the
    # learning rate is meant for that batch size.
    batch = _documented_gpus(path) * cfg.train_dataloader.batch_size
    assert batch == 256
    assert cfg.auto_scale_lr.base_batch_size == batch
    optimizer = cfg.optim_wrapper.optimizer
    assert optimizer.type == expected['optimizer']
    if 'lr' in expected:
        assert optimizer.lr == pytest.approx(expected['lr'])
    else:  # mmpretrain's learning rate scaled linearly to our batch size
        assert optimizer.lr == pytest.approx(
            base.optim_wrapper.optimizer.lr * batch /
            base.auto_scale_lr.base_batch_size)

    # The smoothing, and nothing else in the model, is changed.
    hooks = _sts_hooks(cfg)
    assert len(hooks) == 1
    assert hooks[0].preserve_prob == expected['preserve_prob']
    assert _unscoped(cfg.model) == _unscoped(base.model)


@pytest.mark.parametrize('name', sorted(BASELINE_OF))
def test_baselines_differ_only_in_what_they_name(name):
    method = name.split('_')[0]
    sts_name, allowed = BASELINE_OF[name]
    variant = Config.fromfile(osp.join(REPO, 'configs', method, name))
    sts = Config.fromfile(osp.join(REPO, 'configs', method, sts_name))
    differing = {
        k
        for k in set(variant.keys()) | set(sts.keys())
        if variant.get(k) != sts.get(k)
    }
    assert differing <= allowed
    assert 'custom_hooks' in differing


def test_official_recipe_optimizer_and_schedule():
    cfg = Config.fromfile(
        osp.join(REPO, 'configs', 'byol', BYOL_STS_OFFICIAL))
    assert dict(cfg.optim_wrapper) == dict(
        type='OptimWrapper',
        optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-4))
    warmup, cosine = cfg.param_scheduler
    assert warmup.type == 'LinearLR'
    assert warmup.start_factor * cfg.optim_wrapper.optimizer.lr == \
        pytest.approx(1e-6)
    assert (warmup.begin, warmup.end) == (0, 10)
    assert cosine.type == 'CosineAnnealingLR'
    assert (cosine.begin, cosine.end, cosine.T_max) == (10, 200, 190)
    assert cosine.get('eta_min', 0.) == 0.
    for s in (warmup, cosine):
        assert s.by_epoch and s.convert_to_iter_based
    assert cfg.train_cfg.max_epochs == 200
    assert cfg.train_dataloader.drop_last
    sts = Config.fromfile(
        osp.join(REPO, 'configs', 'byol', BYOL_STS))
    assert _unscoped({**cfg.train_dataloader, 'drop_last': None}) == \
        _unscoped({**sts.train_dataloader, 'drop_last': None})
    (hook, ) = _sts_hooks(cfg)
    assert (hook.preserve_prob, hook.momentum, hook.momentum_schedule,
            hook.end_momentum) == (0.7, 0.01, 'cosine', 0.0)


def test_small_configs_have_their_own_experiment_names(imagenet_root,
                                                       tmp_path):
    """Runners built from two shrunk configs in the same second get
    different message hubs (the configs are all read from a
    ``child_config.py``, so the default names would collide)."""
    names = {
        small_selfsup_cfg(PRETRAIN_CONFIGS[0], str(tmp_path / str(i)),
                          imagenet_root).get('experiment_name')
        for i in range(2)
    }
    assert None not in names and len(names) == 2


@pytest.mark.parametrize('path', PRETRAIN_CONFIGS, ids=_ids(PRETRAIN_CONFIGS))
def test_pretrain_config_trains(path, imagenet_root, tmp_path):
    """Two iterations of the recipe (ResNet-18, 32-pixel crops, batch 4)."""
    name, method = osp.basename(path), _method(path)
    expected = EXPECTED[name]
    hooks = copy.deepcopy(Config.fromfile(path).custom_hooks)
    cfg = small_selfsup_cfg(
        path, str(tmp_path), imagenet_root, max_epochs=1, hooks=hooks)
    cfg.default_hooks.checkpoint = None
    runner = Runner.from_cfg(cfg)
    runner.train()

    assert runner.iter == 2
    loss = runner.message_hub.get_scalar('train/loss').current()
    assert torch.isfinite(torch.as_tensor(loss))

    teacher = getattr(_bare(runner.model), TEACHER[method])
    assert isinstance(teacher, SpatialTemporalSmoothing)
    smoother = teacher.smoother
    assert smoother.preserve_prob == expected['preserve_prob']
    kind, momentum, end_momentum = expected['schedule']
    assert type(smoother.schedule) is kind
    assert smoother.schedule.momentum == pytest.approx(momentum)
    if end_momentum is not None:
        assert smoother.schedule.end_momentum == pytest.approx(end_momentum)
    assert teacher._total_steps() == 2  # the run's max_iters
    assert int(teacher.steps) == 2

    optimizer = runner.optim_wrapper.optimizer
    assert type(optimizer).__name__ == expected['optimizer']
    cfg_lr = Config.fromfile(path).optim_wrapper.optimizer.lr
    assert {g['initial_lr'] for g in optimizer.param_groups} == {cfg_lr}
    if '-official_' in name:
        # Warm-up from 1e-6, updated every iteration (10 epochs of 2
        # iterations here, reaching 0.05 at the last), on every parameter.
        lrs = runner.message_hub.get_scalar('train/lr').data[0]
        assert lrs[0] == pytest.approx(1e-6)
        assert lrs[1] == pytest.approx(1e-6 + (0.05 - 1e-6) / (20 - 1))
        assert {g['weight_decay'] for g in optimizer.param_groups} == {1e-4}
        assert {g['momentum'] for g in optimizer.param_groups} == {0.9}


def _shrink_probe(cfg, data_root, work_dir):
    """ResNet-18, 32-pixel images, batch 4, the tiny ImageNet folder, one
    epoch (two iterations), its checkpoint saved at the end."""
    cfg.work_dir = work_dir
    cfg.model.backbone.depth = 18
    cfg.model.head.in_channels = 512
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        for key in ('scale', 'crop_size'):
            _set_key(cfg[loader].dataset.pipeline, key, 32)
        cfg[loader].batch_size = 4
        cfg[loader].num_workers = 0
        cfg[loader].persistent_workers = False
        cfg[loader].dataset.data_root = data_root
    cfg.train_cfg.max_epochs = 1
    cfg.default_hooks.logger.interval = 1
    cfg.log_level = 'WARNING'
    cfg.randomness = dict(seed=0)
    return cfg


def _backbone_checkpoint(path):
    """A ResNet-18 backbone checkpoint in the format of
    tools/model_converters/extract_backbone.py: ``state_dict`` with
    ``backbone.<ResNet key>``; BN statistics made non-trivial."""
    torch.manual_seed(1)
    backbone = MODELS.build(dict(type='ResNet', depth=18))
    for module in backbone.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    torch.save({'state_dict': state}, path)
    return state


def _assert_backbone_is(model, state):
    """``model.backbone`` holds exactly the ``backbone.*`` tensors."""
    loaded = model.backbone.state_dict()
    assert loaded.keys() == {k[len('backbone.'):] for k in state}
    for key, value in state.items():
        torch.testing.assert_close(loaded[key[len('backbone.'):]], value)


@pytest.mark.parametrize('path', PROBE_CONFIGS, ids=_ids(PROBE_CONFIGS))
def test_probe_config_settings(path):
    method = _method(path)
    cfg = Config.fromfile(path)
    base = _mmpretrain_config(PROBE_BASE[method])
    init_cfg = cfg.model.backbone.init_cfg
    assert init_cfg.type == 'Pretrained' and init_cfg.prefix == 'backbone.'
    assert init_cfg.checkpoint == ''
    assert cfg.model.backbone.frozen_stages == 4
    # mmpretrain's benchmark, for the batch size its command runs.
    batch = _documented_gpus(path) * cfg.train_dataloader.batch_size
    assert batch == _documented_gpus(path) * base.train_dataloader.batch_size
    assert cfg.auto_scale_lr.base_batch_size == batch
    for key in ('optim_wrapper', 'param_scheduler', 'train_cfg',
                'train_dataloader', 'val_dataloader', 'val_evaluator'):
        assert _unscoped(cfg[key]) == _unscoped(base[key]), key
    assert _unscoped(cfg.model.head) == _unscoped(base.model.head)


@pytest.mark.parametrize('path', PROBE_CONFIGS, ids=_ids(PROBE_CONFIGS))
def test_probe_config_loads_backbone_trains_and_tests(path, imagenet_root,
                                                      tmp_path):
    backbone_ckpt = str(tmp_path / 'backbone.pth')
    saved = _backbone_checkpoint(backbone_ckpt)
    cfg = _shrink_probe(
        Config.fromfile(path), imagenet_root, str(tmp_path / 'train'))
    # What `--cfg-options model.backbone.init_cfg.checkpoint=...` does.
    cfg.merge_from_dict({'model.backbone.init_cfg.checkpoint': backbone_ckpt})
    runner = Runner.from_cfg(cfg)
    runner.train()

    # The backbone is the checkpoint's and stays frozen (BN statistics too);
    # only the linear head is optimised.
    model = _bare(runner.model)
    _assert_backbone_is(model, saved)
    assert runner.iter == 2
    state = runner.optim_wrapper.optimizer.state
    assert all(state[p] for p in model.head.parameters())
    assert not any(state[p] for p in model.backbone.parameters())

    # `tools/test.py CONFIG LINEAR_CKPT`: a fresh runner, no backbone option.
    cfg = _shrink_probe(
        Config.fromfile(path), imagenet_root, str(tmp_path / 'test'))
    cfg.load_from = osp.join(str(tmp_path / 'train'), 'epoch_1.pth')
    tester = Runner.from_cfg(cfg)
    metrics = tester.test()
    assert 0. <= metrics['accuracy/top1'] <= 100.
    _assert_backbone_is(_bare(tester.model), saved)
    torch.testing.assert_close(
        _bare(tester.model).head.state_dict(), model.head.state_dict())


def _extract_backbone_tool():
    """tools/model_converters/extract_backbone.py as a module."""
    path = osp.join(REPO, 'tools', 'model_converters', 'extract_backbone.py')
    spec = importlib.util.spec_from_file_location('extract_backbone', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_byol_pretrain_extract_teacher_then_probe(imagenet_root, tmp_path):
    """The README's chain: pretrain, extract the teacher's backbone, probe
    it with the one `--cfg-options` key."""
    pretrain = osp.join(REPO, 'configs', 'byol', BYOL_STS)
    probe = osp.join(REPO, 'configs', 'byol', 'benchmarks',
                     'resnet50_8xb512-linear-coslr-90e_in1k.py')
    hooks = copy.deepcopy(Config.fromfile(pretrain).custom_hooks)
    cfg = small_selfsup_cfg(
        pretrain,
        str(tmp_path / 'pretrain'),
        imagenet_root,
        max_epochs=1,
        hooks=hooks)
    runner = Runner.from_cfg(cfg)
    runner.train()
    teacher = _bare(runner.model).target_net.module[0].state_dict()
    student = _bare(runner.model).backbone.state_dict()
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)

    backbone_ckpt = str(tmp_path / 'teacher_backbone.pth')
    _extract_backbone_tool().main([
        osp.join(str(tmp_path / 'pretrain'), 'epoch_1.pth'), backbone_ckpt,
        '--source', 'teacher'
    ])
    cfg = _shrink_probe(
        Config.fromfile(probe), imagenet_root, str(tmp_path / 'probe'))
    cfg.merge_from_dict({'model.backbone.init_cfg.checkpoint': backbone_ckpt})
    cfg.train_cfg.max_epochs = 0  # loading the weights is what is checked
    probe_runner = Runner.from_cfg(cfg)
    probe_runner.train()
    _assert_backbone_is(
        _bare(probe_runner.model), {
            f'backbone.{k}': v
            for k, v in teacher.items()
        })
