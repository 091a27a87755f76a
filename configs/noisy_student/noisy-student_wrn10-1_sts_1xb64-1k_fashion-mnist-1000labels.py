# Noisy Student on Fashion-MNIST (Xie et al., CVPR 2020; one command:
#   python tools/noisy_student.py THIS_CONFIG --work-dir WORK_DIR
# see configs/noisy_student/README.md), with the student smoothed by
# Spatial-Temporal Smoothing.
#
# Round 0 trains the teacher on the 1,000 labeled images
# (noisy_student.teacher_config). Each round r >= 1: the teacher predicts
# soft labels for the 60,000 training images without augmentation
# (`unlabeled_dataset`), the images below 0.3 confidence are dropped, and a
# WRN-10-1 student learns from 16 labeled + 48 pseudo-labeled images per
# step with noise: FixMatch's strong augmentation (RandAugment + Cutout) on
# the input and dropout (0.1) in the residual blocks (the WRN has no
# stochastic depth). An STS average of the student (EMAHook, p = 0.5,
# weight 0.01 per step) is what MMEngine saves as the model: it becomes the
# next round's teacher. The TMA and raw twins change only the smoothing.
_base_ = ['./wrn10-1_1xb64-1k_fashion-mnist-1000labels.py']

noisy_student = dict(
    rounds=2,
    teacher_config='configs/noisy_student/'
    'wrn10-1_1xb64-1k_fashion-mnist-1000labels.py',
    threshold=0.3,
    per_class=None,
    hard=False,
    batch_size=500)

num_classes = 10
labeled_batch_size = 16
unlabeled_ratio = 3
batch_size = labeled_batch_size * (1 + unlabeled_ratio)  # 64

model = dict(
    backbone=dict(drop_rate=0.1),
    head=dict(loss=dict(type='CrossEntropyLoss', use_soft=True)))

_train_set = dict(
    type=_base_.dataset_type,
    data_root=_base_.data_root,
    split='train',
    download=False)
# The images the teacher labels: no augmentation.
unlabeled_dataset = dict(_train_set, pipeline=[dict(type='PackInputs')])
train_dataloader = dict(
    _delete_=True,
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(
        type='MultiSourceSampler',
        batch_size=batch_size,
        source_ratio=[1, unlabeled_ratio],
        shuffle=True,
        seed=0),
    batch_sampler=dict(type='MultiSourceBatchSampler'),
    dataset=dict(
        type='ConcatDataset',
        datasets=[
            dict(
                type='OneHotLabels',
                num_classes=num_classes,
                dataset=dict(
                    _base_.labeled_dataset,
                    dataset=dict(
                        _base_.labeled_dataset.dataset,
                        pipeline=_base_.strong_pipeline))),
            # The file is set by tools/noisy_student.py for each round.
            dict(
                type='PseudoLabeledDataset',
                pseudo_label_file='',
                dataset=dict(_train_set, pipeline=_base_.strong_pipeline)),
        ]))

custom_hooks = [
    dict(
        type='EMAHook',
        ema_type='SpatialTemporalSmoothing',
        preserve_prob=0.5,
        momentum=0.01)
]
