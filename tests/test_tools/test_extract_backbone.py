"""tools/model_converters/extract_backbone.py on checkpoints of real short
runs: a classifier with ``EMAHook(ema_type='SpatialTemporalSmoothing')``,
BYOL with the STS hook *and* an EMAHook, and the refusal to overwrite the
training checkpoint; finding teachers from the keys. (The train -> extract
-> linear probe chain is in test_train_test_tools.py.)"""
import hashlib
import importlib.util
import os
import os.path as osp
import uuid

import pytest
import torch
from conftest import BYOL_CFG, REPO_ROOT, small_selfsup_cfg
from mmengine.config import Config
from mmengine.hooks import EMAHook
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

TOOL = osp.join(REPO_ROOT, 'tools', 'model_converters', 'extract_backbone.py')
#: A ResNet-18 with 8 stem / base channels: 64 output channels.
TINY_RESNET = dict(
    type='ResNet',
    depth=18,
    stem_channels=8,
    base_channels=8,
    norm_cfg=dict(type='BN'),
    zero_init_residual=False)
#: EMAHook with the STS teacher; momentum 0.5 so that two updates leave the
#: average far from the live weights.
STS_EMA_HOOK = dict(
    type='EMAHook',
    ema_type='SpatialTemporalSmoothing',
    preserve_prob=0.5,
    momentum=0.5)


def load_tool():
    """extract_backbone.py as a module."""
    spec = importlib.util.spec_from_file_location('tool_extract_backbone',
                                                  TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


extract = load_tool()


def run_extract(ckpt, out, *options) -> dict:
    """Run the tool's ``main`` as the command line does; load its output."""
    extract.main([str(ckpt), str(out), *options])
    return torch.load(str(out), weights_only=True)


def run_extract_fails(ckpt, out, *options) -> str:
    """Run the tool, expecting it to exit with an error; return the
    message."""
    with pytest.raises(SystemExit) as err:
        extract.main([str(ckpt), str(out), *options])
    assert not isinstance(err.value.code, int), err.value.code
    return str(err.value.code)


def unprefixed(out: dict) -> dict:
    """The backbone of an output file, without ``backbone.``."""
    assert all(k.startswith('backbone.') for k in out['state_dict'])
    return {k[len('backbone.'):]: v for k, v in out['state_dict'].items()}


def assert_same(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def differs(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a
               if a[k].is_floating_point())


def cloned(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def ema_hook_of(runner) -> EMAHook:
    (hook, ) = [h for h in runner.hooks if isinstance(h, EMAHook)]
    return hook


def bare(model):
    return model.module if is_model_wrapper(model) else model


def classifier_cfg(work_dir: str, data_root: str) -> Config:
    """A tiny ``ImageClassifier`` trained 1 epoch (2 iterations) on the tiny
    ImageNet folder with ``STS_EMA_HOOK``, no validation."""
    return Config(
        dict(
            default_scope='mmpretrain',
            work_dir=work_dir,
            experiment_name=f'extract-{uuid.uuid4().hex}',
            model=dict(
                type='ImageClassifier',
                data_preprocessor=dict(
                    num_classes=2,
                    mean=[123.675, 116.28, 103.53],
                    std=[58.395, 57.12, 57.375],
                    to_rgb=True),
                backbone=TINY_RESNET,
                neck=dict(type='GlobalAveragePooling'),
                head=dict(
                    type='LinearClsHead',
                    num_classes=2,
                    in_channels=64,
                    loss=dict(type='CrossEntropyLoss'),
                    topk=(1, ))),
            train_dataloader=dict(
                batch_size=4,
                num_workers=0,
                dataset=dict(
                    type='ImageNet',
                    data_root=data_root,
                    split='train',
                    pipeline=[
                        dict(type='LoadImageFromFile'),
                        dict(type='Resize', scale=32),
                        dict(type='PackInputs'),
                    ]),
                sampler=dict(type='DefaultSampler', shuffle=True),
                collate_fn=dict(type='default_collate')),
            optim_wrapper=dict(
                optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
            train_cfg=dict(by_epoch=True, max_epochs=1),
            default_hooks=dict(
                logger=dict(type='LoggerHook', interval=1),
                checkpoint=dict(type='CheckpointHook', interval=1)),
            custom_hooks=[STS_EMA_HOOK],
            randomness=dict(seed=0),
            log_level='WARNING'))


@pytest.fixture(scope='module')
def classifier_run(tmp_path_factory, imagenet_root):
    """The epoch-1 checkpoint of a classifier trained with EMAHook, and the
    live and averaged backbones in memory at the end of the run (the
    state the checkpoint saved: no validation ran after it)."""
    work_dir = str(tmp_path_factory.mktemp('ema_classifier'))
    runner = Runner.from_cfg(classifier_cfg(work_dir, imagenet_root))
    runner.train()
    averaged = ema_hook_of(runner).ema_model
    return dict(
        checkpoint=osp.join(work_dir, 'epoch_1.pth'),
        live=cloned(bare(runner.model).backbone),
        averaged=cloned(averaged.module.backbone),
        ema_steps=int(averaged.steps))


def test_ema_hook_checkpoint_layout(classifier_run):
    """What the tool relies on: EMAHook saves the average in ``state_dict``
    and the live weights in ``ema_state_dict`` as ``module.<key>``."""
    ckpt = torch.load(classifier_run['checkpoint'], map_location='cpu')
    state, ema = ckpt['state_dict'], ckpt['ema_state_dict']
    assert int(ema['steps']) == classifier_run['ema_steps'] == 2
    for key, value in classifier_run['averaged'].items():
        assert torch.equal(state[f'backbone.{key}'], value), key
    for key, value in classifier_run['live'].items():
        assert torch.equal(ema[f'module.backbone.{key}'], value), key
    assert differs(classifier_run['live'], classifier_run['averaged'])


def test_ema_hook_student_is_live_and_ema_is_averaged(classifier_run,
                                                      tmp_path):
    ckpt = classifier_run['checkpoint']
    student = run_extract(ckpt, tmp_path / 'student.pth', '--source',
                          'student')
    assert_same(unprefixed(student), classifier_run['live'])
    assert student['meta']['source'] == 'student'
    assert student['meta']['checkpoint_entry'] == 'ema_state_dict'

    ema = run_extract(ckpt, tmp_path / 'ema.pth', '--source', 'ema')
    assert_same(unprefixed(ema), classifier_run['averaged'])
    assert ema['meta']['source'] == 'ema'
    assert ema['meta']['ema_steps'] == 2
    assert ema['meta']['epoch'] == 1
    # Plain tensors and Python values only: loads weights-only anywhere.
    for name in ('student.pth', 'ema.pth'):
        assert torch.serialization.get_unsafe_globals_in_checkpoint(
            str(tmp_path / name)) == []


def test_ema_hook_without_teacher_points_to_source_ema(classifier_run,
                                                       tmp_path):
    """The classifier has no momentum teacher inside; its STS teacher is
    EMAHook's average, which ``--source teacher`` must point to."""
    out = tmp_path / 'teacher.pth'
    message = run_extract_fails(classifier_run['checkpoint'], out)
    assert classifier_run['checkpoint'] in message
    assert 'no teacher' in message and '--source ema' in message
    assert 'ema_state_dict' in message and '2 updates' in message
    assert not osp.exists(out)


def test_source_ema_needs_ema_state_dict(tmp_path):
    t = torch.ones(2)
    ckpt = tmp_path / 'plain.pth'
    torch.save(
        dict(
            state_dict={
                'backbone.w': t,
                'target_net.module.0.w': t,
                'target_net.steps': torch.tensor(3)
            },
            meta={}), str(ckpt))
    message = run_extract_fails(ckpt, tmp_path / 'out.pth', '--source', 'ema')
    assert '--source ema' in message and 'no `ema_state_dict`' in message
    assert 'EMAHook' in message
    # Without EMAHook, the checkpoint's weights are the live ones.
    out = run_extract(ckpt, tmp_path / 'out.pth')
    assert out['meta']['checkpoint_entry'] == 'state_dict'
    assert out['meta']['teacher_steps'] == 3


def test_teacher_option_needs_source_teacher(tmp_path):
    t = torch.ones(2)
    ckpt = tmp_path / 'byol.pth'
    torch.save(
        dict(
            state_dict={
                'backbone.w': t,
                'target_net.module.0.w': t,
                'target_net.steps': torch.tensor(3)
            }), str(ckpt))
    message = run_extract_fails(ckpt, tmp_path / 'out.pth', '--source',
                                'student', '--teacher', 'target_net')
    assert '--teacher target_net' in message
    assert '--source student' in message
    assert not osp.exists(tmp_path / 'out.pth')


def test_extract_backbone_without_teacher_names_the_keys(tmp_path):
    model = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='ResNet', depth=18),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=2, in_channels=512)))
    ckpt = str(tmp_path / 'classifier.pth')
    torch.save(dict(state_dict=model.state_dict(), meta={}), ckpt)
    with pytest.raises(SystemExit) as err:
        extract.main([ckpt, str(tmp_path / 'out.pth')])
    message = str(err.value.code)
    assert ckpt in message and 'no teacher' in message
    assert 'backbone.layer1.* ' in message and 'head.fc.* ' in message
    assert not osp.exists(tmp_path / 'out.pth')
    # The student's backbone is there.
    extract.main([ckpt, str(tmp_path / 'out.pth'), '--source', 'student'])
    assert osp.exists(tmp_path / 'out.pth')


def test_find_teachers_from_key_prefixes():
    t = torch.zeros(1)
    mocov3 = {
        'backbone.conv1.weight': t,
        'momentum_encoder.module.0.conv1.weight': t,
        'momentum_encoder.module.1.fc.weight': t,
        'momentum_encoder.steps': t,
    }
    assert extract.backbone_prefix(mocov3) == ('momentum_encoder.module.0.',
                                               'momentum_encoder')
    # A whole classifier as teacher (mmsts FixMatch), student inside too.
    fixmatch = {
        'student.backbone.conv1.weight': t,
        'student.head.fc.weight': t,
        'teacher.module.backbone.conv1.weight': t,
        'teacher.module.head.fc.weight': t,
        'teacher.steps': t,
    }
    assert extract.backbone_prefix(fixmatch)[0] == 'teacher.module.backbone.'
    assert extract.backbone_prefix(fixmatch, 'student')[0] == \
        'student.backbone.'
    # Two teachers: the user must choose.
    both = dict(mocov3, **{
        'encoder_k.module.0.conv1.weight': t,
        'encoder_k.steps': t
    })
    with pytest.raises(ValueError, match='several teachers'):
        extract.backbone_prefix(both)
    assert extract.backbone_prefix(
        both, teacher='encoder_k')[0] == 'encoder_k.module.0.'
    # A `steps` key alone is not an averaged model.
    assert extract.find_teachers({'steps': t, 'x.steps': t}) == []


@pytest.fixture(scope='module')
def byol_run(tmp_path_factory, imagenet_root):
    """A tiny BYOL whose ``target_net`` the STS hook smooths, with an
    EMAHook averaging the whole model (teacher included) on top: 1 epoch,
    2 iterations."""
    work_dir = str(tmp_path_factory.mktemp('byol_sts_ema'))
    cfg = small_selfsup_cfg(
        BYOL_CFG,
        work_dir,
        imagenet_root,
        max_epochs=1,
        hooks=[
            dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.7),
            dict(type='EMAHook', momentum=0.5),
        ])
    cfg.model.backbone = TINY_RESNET
    cfg.model.neck.in_channels = 64
    runner = Runner.from_cfg(cfg)
    runner.train()
    model = bare(runner.model)
    averaged = ema_hook_of(runner).ema_model.module
    return dict(
        checkpoint=osp.join(work_dir, 'epoch_1.pth'),
        teacher=cloned(model.target_net.module[0]),
        teacher_steps=int(model.target_net.steps),
        student=cloned(model.backbone),
        ema=cloned(averaged.backbone),
        ema_of_teacher=cloned(averaged.target_net.module[0]))


def test_sts_teacher_and_ema_hook_average_are_both_extractable(
        byol_run, tmp_path):
    ckpt = byol_run['checkpoint']
    # Four different models in one checkpoint.
    assert differs(byol_run['teacher'], byol_run['ema_of_teacher'])
    assert differs(byol_run['teacher'], byol_run['student'])
    assert differs(byol_run['ema'], byol_run['student'])

    teacher = run_extract(ckpt, tmp_path / 'teacher.pth')
    # The live STS teacher, not EMAHook's average of it (the checkpoint's
    # `state_dict['target_net.module.0.*']`).
    assert_same(unprefixed(teacher), byol_run['teacher'])
    assert teacher['meta']['teacher'] == 'target_net'
    assert teacher['meta']['teacher_steps'] == byol_run['teacher_steps'] == 2

    student = run_extract(ckpt, tmp_path / 'student.pth', '--source',
                          'student')
    assert_same(unprefixed(student), byol_run['student'])
    ema = run_extract(ckpt, tmp_path / 'ema.pth', '--source', 'ema')
    assert_same(unprefixed(ema), byol_run['ema'])


@pytest.fixture
def small_checkpoint(tmp_path):
    """A small BYOL-like checkpoint, and its bytes' digest."""
    t = torch.arange(4.)
    path = tmp_path / 'work' / 'epoch_1.pth'
    path.parent.mkdir()
    torch.save(
        dict(
            state_dict={
                'backbone.w': t,
                'target_net.module.0.w': t + 1,
                'target_net.steps': torch.tensor(1)
            },
            meta={}), str(path))
    return path


def digest(path) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.parametrize('spelling',
                         ['same', 'dot', 'dotdot', 'symlink', 'hardlink'])
def test_refuses_to_overwrite_the_checkpoint(small_checkpoint, spelling,
                                             monkeypatch):
    work = small_checkpoint.parent
    monkeypatch.chdir(work)
    before = digest(small_checkpoint)
    ckpt = str(small_checkpoint)
    if spelling == 'same':
        out = ckpt
    elif spelling == 'dot':
        ckpt, out = 'epoch_1.pth', './epoch_1.pth'
    elif spelling == 'dotdot':
        out = str(work / '..' / 'work' / 'epoch_1.pth')
    elif spelling == 'symlink':
        out = str(work / 'latest.pth')
        os.symlink(ckpt, out)
    else:
        out = str(work / 'hardlink.pth')
        os.link(ckpt, out)
    message = run_extract_fails(ckpt, out)
    assert f'out {out} is the input checkpoint {ckpt}' in message
    assert digest(small_checkpoint) == before


def test_writes_another_file(small_checkpoint):
    out = small_checkpoint.parent / 'sub' / 'teacher.pth'
    result = run_extract(small_checkpoint, out)
    assert torch.equal(result['state_dict']['backbone.w'],
                       torch.arange(4.) + 1)
