"""SpatialTemporalSmoothing as the averaged model of MMEngine's own EMAHook,
in a supervised mmpretrain classifier: training, validation on the averaged
weights, and EMAHook's checkpoint save / resume."""
import uuid

import pytest
import torch
from conftest import (StopAfterEpoch, TeacherUpdateRecorder,
                      assert_follows_sts)
from mmengine.config import Config
from mmengine.hooks import EMAHook, Hook
from mmengine.runner import Runner

from mmsts.models import SpatialTemporalSmoothing
from mmsts.smoothing import FragmentMaskGenerator, stream_id

PRESERVE_PROB = 0.5
MOMENTUM = 0.01
EMA_HOOK = dict(
    type='EMAHook',
    ema_type='SpatialTemporalSmoothing',
    preserve_prob=PRESERVE_PROB,
    momentum=MOMENTUM)


def classification_cfg(work_dir, data_root, max_epochs=2):
    """ResNet-18 ``ImageClassifier`` on the tiny ImageNet folder, 32 px,
    batch 4, validation after every epoch (no random augmentation, so that
    a resumed run sees the same images)."""
    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=32),
        dict(type='PackInputs'),
    ]

    def loader(split, shuffle):
        return dict(
            batch_size=4,
            num_workers=0,
            dataset=dict(
                type='ImageNet',
                data_root=data_root,
                split=split,
                pipeline=pipeline),
            sampler=dict(type='DefaultSampler', shuffle=shuffle),
            collate_fn=dict(type='default_collate'))

    return Config(
        dict(
            default_scope='mmpretrain',
            work_dir=str(work_dir),
            experiment_name=f'ema-{uuid.uuid4().hex}',
            model=dict(
                type='ImageClassifier',
                data_preprocessor=dict(
                    num_classes=2,
                    mean=[123.675, 116.28, 103.53],
                    std=[58.395, 57.12, 57.375],
                    to_rgb=True),
                backbone=dict(type='ResNet', depth=18),
                neck=dict(type='GlobalAveragePooling'),
                head=dict(
                    type='LinearClsHead',
                    num_classes=2,
                    in_channels=512,
                    loss=dict(type='CrossEntropyLoss'),
                    topk=(1, ))),
            train_dataloader=loader('train', True),
            val_dataloader=loader('val', False),
            val_evaluator=dict(type='Accuracy', topk=(1, )),
            optim_wrapper=dict(
                optimizer=dict(type='SGD', lr=0.05, momentum=0.9)),
            train_cfg=dict(
                by_epoch=True, max_epochs=max_epochs, val_interval=1),
            val_cfg=dict(),
            default_hooks=dict(
                logger=dict(type='LoggerHook', interval=1),
                checkpoint=dict(type='CheckpointHook', interval=1)),
            custom_hooks=[EMA_HOOK],
            randomness=dict(seed=0),
            log_level='WARNING'))


def ema_hook_of(runner):
    (hook, ) = [h for h in runner.hooks if isinstance(h, EMAHook)]
    return hook


class SnapshotDuringValidation(Hook):
    """Records the model's weights while validation runs."""

    priority = 'LOW'

    def before_val_epoch(self, runner):
        self.weights = [p.clone() for p in runner.model.parameters()]


def build_runner(work_dir, data_root, resume=False, extra_hooks=()):
    cfg = classification_cfg(work_dir, data_root)
    cfg.resume = resume
    runner = Runner.from_cfg(cfg)
    for hook in extra_hooks:
        runner.register_hook(hook)
    return runner


@pytest.fixture(scope='module')
def trained(imagenet_root, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('ema')
    recorder = TeacherUpdateRecorder(lambda r: ema_hook_of(r).ema_model,
                                     lambda step, max_iters: MOMENTUM)
    during_val = SnapshotDuringValidation()
    runner = build_runner(
        work_dir, imagenet_root, extra_hooks=[recorder, during_val])
    runner.train()
    return runner, recorder, during_val, work_dir


def test_ema_model_is_sts(trained):
    runner, _, _, _ = trained
    ema = ema_hook_of(runner).ema_model
    assert type(ema) is SpatialTemporalSmoothing
    assert ema.smoother.preserve_prob == PRESERVE_PROB
    assert ema.momentum == MOMENTUM
    # EMAHook updates after every iteration: 8 images, batch 4, 2 epochs.
    assert int(ema.steps) == runner.max_iters == 4


def test_ema_follows_sts_rule(trained):
    runner, recorder, _, _ = trained
    ema = ema_hook_of(runner).ema_model
    assert len(recorder.calls) == runner.max_iters
    # Built by EMAHook with the wrapper's defaults: seed 0, name 'teacher'.
    masks = FragmentMaskGenerator(
        PRESERVE_PROB, seed=0, stream=stream_id('teacher'))
    seen = assert_follows_sts(recorder.calls, masks)
    assert seen['kept'] > 0 and seen['updated'] > 0
    assert seen['neither'] == 0
    assert seen['either'] <= 0.1 * sum(seen.values()), seen
    differ = [
        not torch.equal(a, s)
        for a, s in zip(ema.module.parameters(), runner.model.parameters())
    ]
    assert sum(differ) > 0.5 * len(differ)


def test_validation_used_averaged_weights(trained):
    """EMAHook swaps the averaged weights in for validation and back."""
    runner, _, during_val, _ = trained
    ema = ema_hook_of(runner).ema_model
    # The last validation ran after the last update: on the final averaged
    # weights, and the training weights are back in the model.
    assert all(
        torch.equal(a, b)
        for a, b in zip(during_val.weights, ema.module.parameters()))
    assert any(not torch.equal(a, b)
               for a, b in zip(during_val.weights, runner.model.parameters()))
    assert 'val/accuracy/top1' in runner.message_hub.log_scalars


def test_checkpoint_holds_ema_state(trained):
    runner, _, _, work_dir = trained
    ckpt = torch.load(work_dir / 'epoch_2.pth')
    ema = ema_hook_of(runner).ema_model
    ema_state = ckpt['ema_state_dict']
    assert list(ema_state) == list(ema.state_dict())
    assert int(ema_state['steps']) == 4
    # EMAHook's convention: `state_dict` holds the averaged weights (for
    # deployment), `ema_state_dict` the training weights.
    model_state = runner.model.state_dict()
    for name, param in ema.module.named_parameters():
        assert torch.equal(ckpt['state_dict'][name], param)
        assert torch.equal(ema_state[f'module.{name}'], model_state[name])


def test_resume_round_trip(imagenet_root, tmp_path, trained):
    straight, _, _, _ = trained
    first = build_runner(
        tmp_path, imagenet_root, extra_hooks=[StopAfterEpoch(1)])
    first.train()
    assert int(ema_hook_of(first).ema_model.steps) == 2
    resumed = build_runner(tmp_path, imagenet_root, resume=True)
    resumed.train()
    assert resumed._has_loaded and resumed.iter == 4

    ema_straight = ema_hook_of(straight).ema_model.state_dict()
    ema_resumed = ema_hook_of(resumed).ema_model.state_dict()
    assert type(ema_hook_of(resumed).ema_model) is SpatialTemporalSmoothing
    assert list(ema_straight) == list(ema_resumed)
    different = [
        k for k in ema_straight
        if not torch.equal(ema_straight[k], ema_resumed[k])
    ]
    assert not different, different[:5]
    student_straight = straight.model.state_dict()
    student_resumed = resumed.model.state_dict()
    assert all(
        torch.equal(student_straight[k], student_resumed[k])
        for k in student_straight)
