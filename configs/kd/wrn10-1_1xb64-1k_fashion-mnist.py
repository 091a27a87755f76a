# The Fashion-MNIST classifier of the KD study (docs/studies.md): a WRN-10-1
# (77 k parameters) trained on all 60,000 training images with FixMatch's
# weak augmentation (flip, pad-and-crop), 64 images per step for 1,000
# steps (about one epoch), SGD with FixMatch's cosine decay, evaluated every
# 100 steps on the first 1,000 test images. It is the fixed teacher of
# kd_wrn10-1_fixed-teacher_1xb64-1k-strongaug_fashion-mnist.py and, with
# the strong augmentation, the no-KD baseline
# (wrn10-1_1xb64-1k-strongaug_fashion-mnist.py). Sized for one CPU core:
# ~4 minutes single-threaded.
_base_ = [
    '../_base_/datasets/pipelines/fashion_mnist_augment.py',
    '../fixmatch/_base_/fixmatch_schedule_1k_cpu.py',
]

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='WideResNet',
        depth=10,
        widen_factor=1,
        in_channels=1,
        norm_cfg=dict(type='BN', momentum=0.1, eps=0.001)),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=64,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))

train_dataloader = dict(
    batch_size=64,
    num_workers=0,
    persistent_workers=False,
    # Fixed (not `randomness.seed`) so that `--resume` continues the data
    # stream exactly; a study sets it per seed.
    sampler=dict(type='DefaultSampler', shuffle=True, seed=0),
    dataset=dict(pipeline=_base_.weak_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False, dataset=dict(indices=1000))
test_dataloader = val_dataloader

val_cfg = dict(_delete_=True)
