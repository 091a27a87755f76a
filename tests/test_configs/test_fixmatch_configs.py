"""Every configs/fixmatch/ config: naming, FixMatch's recipe, controlled
baselines, a few iterations on tiny data in the real formats (CIFAR pickles,
scikit-learn's digits), and an exact resume."""
import glob
import math
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.optim.scheduler.param_scheduler import INF
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

import mmsts  # noqa: F401  (registers the modules)
from conftest import REPO_ROOT, make_cifar_pickles
from mmsts.engine import FixMatchCosineLR

CONFIG_DIR = osp.join(
    REPO_ROOT, 'configs', 'fixmatch')
# {algorithm}_{backbone}_{teacher}_{gpus}xb{B}-mu{mu}-{iters}_{data}-{N}labels
# where the algorithm is `fixmatch` (the original: pseudo-labels from the
# model being trained) or `fixmatch-mt` (mean teacher: from the teacher).
NAME = re.compile(r'(?P<algo>fixmatch|fixmatch-mt)_wrn(?P<depth>\d+)-'
                  r'(?P<k>\d+)_(?P<teacher>sts|tma|se)_1xb(?P<B>\d+)-'
                  r'mu(?P<mu>\d+)-(?P<kiters>\d+)k_'
                  r'(?P<data>cifar10|cifar100|digits)-(?P<labels>\d+)'
                  r'labels\.py')
# The configs of these tests: CIFAR and the digits.
CONFIGS = sorted(
    p for p in glob.glob(osp.join(CONFIG_DIR, 'fixmatch*_*.py'))
    if re.search(r'_(cifar10|cifar100|digits)-\d+labels\.py$', p))
ORIGINAL_CONFIGS = [
    p for p in CONFIGS if osp.basename(p).startswith('fixmatch_')
]
MT_CONFIGS = [
    p for p in CONFIGS if osp.basename(p).startswith('fixmatch-mt_')
]
CIFAR_CONFIGS = [p for p in CONFIGS if '_cifar' in p]
NUM_CLASSES = dict(cifar10=10, cifar100=100, digits=10)
DATASET_TYPE = dict(cifar10='CIFAR10', cifar100='CIFAR100', digits='Digits')
# FixMatch's label counts (Sohn et al., 2020, Table 2).
CIFAR_LABELS = dict(cifar10={40, 250, 4000}, cifar100={400, 2500, 10000})
PER_CLASS = 4  # training images per class of the tiny CIFAR data sets
PSEUDO_LABEL_SOURCE = {'fixmatch': 'student', 'fixmatch-mt': 'teacher'}


def config_id(path):
    return osp.basename(path)[:-len('.py')]


def parse_name(path):
    match = NAME.fullmatch(osp.basename(path))
    assert match, f'{osp.basename(path)} does not follow the naming scheme'
    return {
        k: v if k in ('algo', 'teacher', 'data') else int(v)
        for k, v in match.groupdict().items()
    }


def sts_sibling(path):
    name = osp.basename(path)
    return osp.join(
        osp.dirname(path), re.sub(r'_(tma|se)_', '_sts_', name, count=1))


def original_sibling(path):
    name = osp.basename(path)
    assert name.startswith('fixmatch-mt_')
    return osp.join(
        osp.dirname(path), 'fixmatch_' + name[len('fixmatch-mt_'):])


def test_every_cifar_split_has_sts_and_tma_configs_of_both_algorithms():
    found = {(n['algo'], n['data'], n['labels'], n['teacher'])
             for n in map(parse_name, CIFAR_CONFIGS)}
    expected = {(algo, data, labels, teacher)
                for algo in ('fixmatch', 'fixmatch-mt')
                for data, counts in CIFAR_LABELS.items()
                for labels in counts
                for teacher in ('sts', 'tma')}
    assert found == expected


def test_every_mean_teacher_config_has_an_original_sibling():
    assert len(MT_CONFIGS) == 14  # 12 CIFAR and 2 digits configs
    for path in MT_CONFIGS:
        assert osp.isfile(original_sibling(path)), path


@pytest.mark.parametrize('path', CONFIGS, ids=config_id)
def test_pseudo_labels_come_from_the_model_the_name_says(path):
    """`fixmatch_*` is the original FixMatch: pseudo-labels from the model
    being trained, the teacher only evaluated; `fixmatch-mt_*` takes them
    from the teacher, in training mode."""
    algo = parse_name(path)['algo']
    cfg = Config.fromfile(path)
    model = MODELS.build(cfg.model)
    assert model.semi_train_cfg['pseudo_label_source'] == \
        PSEUDO_LABEL_SOURCE[algo]
    assert model.semi_train_cfg['teacher_mode'] == 'train'
    assert model.semi_test_cfg['predict_on'] == 'teacher'  # evaluated


@pytest.mark.parametrize('path', MT_CONFIGS, ids=config_id)
def test_mean_teacher_differs_from_fixmatch_in_the_pseudo_labels(path):
    mt = Config.fromfile(path).to_dict()
    original = Config.fromfile(original_sibling(path)).to_dict()
    mt_cfg = mt['model'].pop('semi_train_cfg')
    original_cfg = original['model'].pop('semi_train_cfg')
    assert mt_cfg == dict(original_cfg, pseudo_label_source='teacher',
                          teacher_mode='train')
    assert original_cfg['pseudo_label_source'] == 'student'
    assert mt == original


@pytest.mark.parametrize('path', CONFIGS, ids=config_id)
def test_config_matches_its_name(path):
    name = parse_name(path)
    cfg = Config.fromfile(path)
    labeled, unlabeled = cfg.train_dataloader.dataset.datasets
    assert labeled.type == 'LabeledSubset'
    assert labeled.num_per_class * NUM_CLASSES[name['data']] == name['labels']
    assert labeled.dataset.type == unlabeled.type == DATASET_TYPE[name['data']]
    assert cfg.train_dataloader.sampler.source_ratio == [1, name['mu']]
    assert cfg.train_dataloader.batch_size == name['B'] * (1 + name['mu'])
    assert cfg.train_dataloader.sampler.batch_size == name['B'] * (1 +
                                                                   name['mu'])
    assert cfg.train_cfg.max_iters // 1000 == name['kiters']
    model = cfg.model
    assert model.type == 'FixMatch'
    assert (model.backbone.type, model.backbone.depth,
            model.backbone.widen_factor) == ('WideResNet', name['depth'],
                                             name['k'])
    assert model.head.num_classes == NUM_CLASSES[name['data']]
    teacher = model.teacher
    assert teacher.type == 'SpatialTemporalSmoothing'
    assert teacher.preserve_prob == (0.0 if name['teacher'] == 'tma' else 0.5)
    if name['teacher'] == 'se':
        assert teacher.momentum == 1.0  # the selected fragments are copied
    assert cfg.val_cfg.type == 'TeacherStudentValLoop'
    (scheduler, ) = cfg.param_scheduler
    assert scheduler.type == 'FixMatchCosineLR'
    assert scheduler.num_cycles == 7 / 16
    assert scheduler.end == cfg.train_cfg.max_iters


@pytest.mark.parametrize('path', CIFAR_CONFIGS, ids=config_id)
def test_cifar_config_follows_the_fixmatch_recipe(path):
    data = parse_name(path)['data']
    cfg = Config.fromfile(path)
    assert cfg.train_dataloader.batch_size == 64 * (1 + 7)
    assert cfg.model.backbone.depth == 28
    assert cfg.model.backbone.widen_factor == (2 if data == 'cifar10' else 8)
    assert cfg.model.teacher.momentum == 0.001  # teacher weight 0.999
    assert cfg.model.semi_train_cfg.threshold == 0.95
    assert cfg.model.semi_train_cfg.lambda_u == 1.0
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.type, optimizer.lr, optimizer.momentum,
            optimizer.nesterov) == ('SGD', 0.03, 0.9, True)
    assert optimizer.weight_decay == (5e-4 if data == 'cifar10' else 1e-3)
    assert cfg.optim_wrapper.paramwise_cfg == dict(
        norm_decay_mult=0.0, bias_decay_mult=0.0)
    assert cfg.train_cfg.type == 'IterBasedTrainLoop'
    assert cfg.train_cfg.max_iters == 2**20
    # FixMatch evaluates every 64k labeled images (1,024 steps) and reports
    # the median of the last 20 evaluations; the best checkpoint is a
    # convenience.
    assert cfg.train_cfg.val_interval == 1024
    assert cfg.default_hooks.checkpoint.save_best == 'teacher/accuracy/top1'


@pytest.mark.parametrize(
    'path', [p for p in CONFIGS if '_sts_' not in p], ids=config_id)
def test_baseline_differs_from_sts_in_one_value(path):
    baseline = Config.fromfile(path).to_dict()
    sts = Config.fromfile(sts_sibling(path)).to_dict()
    key = 'preserve_prob' if '_tma_' in path else 'momentum'
    assert baseline['model']['teacher'].pop(
        key) != sts['model']['teacher'].pop(key)
    assert baseline == sts


# ----------------------------------------------------------------------
# FixMatch's learning rate
# ----------------------------------------------------------------------
def test_fixmatch_cosine_lr_is_cos_7pi_k_over_16K():
    K = 16
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.03)
    scheduler = FixMatchCosineLR(optimizer, by_epoch=False, end=K)
    lrs = []
    for _ in range(K + 3):  # held after the end
        lrs.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    expected = [0.03 * math.cos(7 * math.pi * k / (16 * K)) for k in range(K)]
    assert lrs[:K] == pytest.approx(expected, rel=1e-12)
    assert lrs[K - 1] > 0.03 * math.cos(7 * math.pi / 16) > 0  # ends ~0.2x
    assert lrs[K:] == pytest.approx([lrs[K - 1]] * 3)


@pytest.mark.parametrize('kwargs,match', [
    (dict(end=10, num_cycles=0), 'num_cycles.*0'),
    (dict(end=10, num_cycles=0.75), 'num_cycles.*0.75'),
    (dict(end=INF), 'T_max'),
    (dict(end=10, T_max=0), 'T_max.*0'),
])
def test_fixmatch_cosine_lr_bad_arguments(kwargs, match):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1)
    with pytest.raises(ValueError, match=match):
        FixMatchCosineLR(optimizer, by_epoch=False, **kwargs)


# ----------------------------------------------------------------------
# Short runs of every config
# ----------------------------------------------------------------------
@pytest.fixture(scope='module')
def cifar_roots(tmp_path_factory):
    root = tmp_path_factory.mktemp('cifar')
    roots = {}
    for classes in (10, 100):
        roots[f'cifar{classes}'] = make_cifar_pickles(
            str(root / f'cifar{classes}'),
            num_classes=classes,
            per_class=PER_CLASS,
            test_per_class=1)
    return roots


class BatchRecorder(Hook):
    """Records the sample indices of every training batch."""

    def __init__(self):
        self.batches = []

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        samples = data_batch['data_samples']
        self.batches.append((runner.iter, {
            branch: [s.sample_idx for s in samples[branch] if s]
            for branch in ('sup', 'unsup_weak')
        }))


def small_cfg(path, work_dir, data_root, max_iters=3, checkpoint_interval=3):
    """The config shrunk for a CPU: WRN-10-1, 2 labeled + mu x 2 unlabeled
    images per batch, at most PER_CLASS labeled images per class,
    ``max_iters`` iterations with validation and a checkpoint at the end.
    ``data_root`` is that of the CIFAR data sets (None for the digits)."""
    cfg = Config.fromfile(path)
    cfg.work_dir = work_dir
    cfg.model.backbone.update(depth=10, widen_factor=1)
    cfg.model.head.in_channels = 64
    labeled, unlabeled = cfg.train_dataloader.dataset.datasets
    labeled.num_per_class = min(labeled.num_per_class, PER_CLASS)
    val_sets = [cfg.val_dataloader.dataset, cfg.test_dataloader.dataset]
    # No serialisation: it runs gc.collect(), slow in a long test session.
    for dataset in [labeled.dataset, unlabeled, *val_sets]:
        dataset.serialize_data = False
        if data_root is not None:
            dataset.data_root = data_root
    batch_size = 2 * sum(cfg.train_dataloader.sampler.source_ratio)
    cfg.train_dataloader.update(
        batch_size=batch_size, num_workers=0, persistent_workers=False)
    cfg.train_dataloader.sampler.update(batch_size=batch_size, seed=0)
    for key in ('val_dataloader', 'test_dataloader'):
        cfg[key].update(batch_size=64, num_workers=0, persistent_workers=False)
    cfg.train_cfg.update(max_iters=max_iters, val_interval=max_iters)
    cfg.param_scheduler[0].end = max_iters
    cfg.default_hooks.checkpoint.interval = checkpoint_interval
    cfg.default_hooks.logger.interval = 1
    cfg.randomness = dict(seed=0)
    cfg.log_level = 'WARNING'
    return cfg


# Every original config, and one mean-teacher config per data set (the
# others differ from their sibling only in `semi_train_cfg`, see above).
TRAINED_CONFIGS = ORIGINAL_CONFIGS + [
    osp.join(CONFIG_DIR, name) for name in (
        'fixmatch-mt_wrn28-2_sts_1xb64-mu7-1048k_cifar10-40labels.py',
        'fixmatch-mt_wrn28-8_tma_1xb64-mu7-1048k_cifar100-400labels.py',
        'fixmatch-mt_wrn10-1_sts_1xb16-mu3-1k_digits-40labels.py')
]


@pytest.mark.parametrize('path', TRAINED_CONFIGS, ids=config_id)
def test_config_trains_and_validates_teacher_and_student(
        path, tmp_path, cifar_roots, no_cifar_md5):
    name = parse_name(path)
    cfg = small_cfg(path, str(tmp_path), cifar_roots.get(name['data']))
    runner = Runner.from_cfg(cfg)
    recorder = BatchRecorder()
    runner.register_hook(recorder)
    # Teacher forward passes in training (the validations run in eval mode).
    teacher_train_calls = []
    runner.model.teacher.module.register_forward_hook(
        lambda m, args, out: teacher_train_calls.append(1)
        if m.training else None)
    runner.train()

    model = runner.model
    assert int(model.teacher.steps) == 3
    expected_calls = 3 if name['algo'] == 'fixmatch-mt' else 0
    assert len(teacher_train_calls) == expected_calls
    assert model.teacher.smoother.preserve_prob == cfg.model.teacher.get(
        'preserve_prob', 0.5)
    # 2 labeled and 2 mu unlabeled images in every batch.
    assert [len(b['sup']) for _, b in recorder.batches] == [2, 2, 2]
    assert [len(b['unsup_weak'])
            for _, b in recorder.batches] == [2 * name['mu']] * 3
    hub = runner.message_hub
    for key in ('loss_x', 'loss_u', 'mask_rate', 'pseudo_label_acc',
                'masked_pseudo_label_acc'):
        assert math.isfinite(hub.get_scalar(f'train/{key}').current())
    for who in ('teacher', 'student'):
        top1 = hub.get_scalar(f'val/{who}/accuracy/top1').current()
        assert 0 <= top1 <= 100
    # FixMatch's learning rate at the last of K = 3 steps, k = 2.
    base_lr = cfg.optim_wrapper.optimizer.lr
    assert runner.optim_wrapper.get_lr()['lr'][0] == pytest.approx(
        base_lr * math.cos(7 * math.pi * 2 / (16 * 3)))
    # Both models are checkpointed, plus the best teacher.
    state = torch.load(
        osp.join(str(tmp_path), 'iter_3.pth'),
        map_location='cpu')['state_dict']
    assert 'teacher.steps' in state
    assert any(k.startswith('student.backbone.') for k in state)
    assert any(k.startswith('teacher.module.backbone.') for k in state)
    best = glob.glob(osp.join(str(tmp_path), 'best_*.pth'))
    if cfg.default_hooks.checkpoint.get('save_best'):
        assert cfg.default_hooks.checkpoint.save_best == \
            'teacher/accuracy/top1'
        assert [osp.basename(p)
                for p in best] == ['best_teacher_accuracy_top1_iter_3.pth']
    else:
        assert not best


def test_sts_hook_takes_over_the_fixmatch_teacher(tmp_path, cifar_roots,
                                                  no_cifar_md5):
    path = osp.join(
        CONFIG_DIR, 'fixmatch_wrn28-2_tma_1xb64-mu7-1048k_cifar10-40labels.py')
    cfg = small_cfg(path, str(tmp_path), cifar_roots['cifar10'])
    cfg.custom_hooks = [
        dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.7)
    ]
    runner = Runner.from_cfg(cfg)
    runner.train()
    teacher = runner.model.teacher
    assert teacher.smoother.preserve_prob == 0.7
    assert teacher.momentum == 0.001  # the model's own momentum is kept
    assert int(teacher.steps) == 3  # still updated by FixMatch, once a step
    assert 0 <= runner.message_hub.get_scalar(
        'train/sts/teacher/update_fraction').current() <= 1


def test_resume_continues_the_same_run(tmp_path, cifar_roots, no_cifar_md5):
    path = osp.join(
        CONFIG_DIR, 'fixmatch_wrn28-2_sts_1xb64-mu7-1048k_cifar10-40labels.py')
    straight_dir, resumed_dir = str(tmp_path / 'a'), str(tmp_path / 'b')
    cfg = small_cfg(
        path,
        straight_dir,
        cifar_roots['cifar10'],
        max_iters=4,
        checkpoint_interval=2)
    straight = Runner.from_cfg(cfg)
    straight_batches = BatchRecorder()
    straight.register_hook(straight_batches)
    straight.train()
    final = {k: v.clone() for k, v in straight.model.state_dict().items()}

    cfg = small_cfg(
        path,
        resumed_dir,
        cifar_roots['cifar10'],
        max_iters=4,
        checkpoint_interval=2)
    cfg.resume = True
    cfg.load_from = osp.join(straight_dir, 'iter_2.pth')
    resumed = Runner.from_cfg(cfg)
    resumed_batches = BatchRecorder()
    resumed.register_hook(resumed_batches)
    resumed.train()

    # The sampler continues where it was: the same batches at iterations 2, 3.
    assert [i for i, _ in resumed_batches.batches] == [2, 3]
    assert resumed_batches.batches == straight_batches.batches[2:]
    # And the student, the teacher (STS masks included) end up identical.
    resumed_state = resumed.model.state_dict()
    assert resumed_state.keys() == final.keys()
    assert int(resumed_state['teacher.steps']) == 4
    for key, value in final.items():
        assert torch.equal(resumed_state[key], value), key
