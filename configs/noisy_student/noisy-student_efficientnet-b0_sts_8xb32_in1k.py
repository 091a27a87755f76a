# Noisy Student on ImageNet (Xie et al., CVPR 2020) in the paper's style,
# run by one command:
#   python tools/noisy_student.py \
#       configs/noisy_student/noisy-student_efficientnet-b0_sts_8xb32_in1k.py \
#       --work-dir work_dirs/noisy_student_b0
# Round 0 trains an EfficientNet-B0 teacher on the labeled images
# (efficientnet-b0_8xb32_in1k-teacher.py). Each round r >= 1: the teacher
# predicts soft labels of the unlabeled images without noise (any image
# folder: `data/unlabeled`, read by mmpretrain's CustomDataset without
# labels; the paper used JFT), images below 0.3 confidence are dropped and
# every class is balanced to `per_class` images; the student, here an
# EfficientNet-B0 (B1 in the -b1 config), learns from 8 labeled + 24
# pseudo-labeled images per GPU and step with noise: RandAugment on the input
# and stochastic depth in the model (mmpretrain's `drop_path_rate`; the
# paper's dropout before the classifier has no mmpretrain head here). The
# student is smoothed by STS (EMAHook, p = 0.5, weight 0.0001 per step); the
# smoothed model is what MMEngine saves, and becomes the next teacher.
_base_ = ['./efficientnet-b0_8xb32_in1k-teacher.py']

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

noisy_student = dict(
    rounds=2,
    teacher_config='configs/noisy_student/'
    'efficientnet-b0_8xb32_in1k-teacher.py',
    threshold=0.3,
    per_class=1300,
    hard=False,
    batch_size=256)

model = dict(
    backbone=dict(drop_path_rate=0.2),
    head=dict(loss=dict(type='CrossEntropyLoss', use_soft=True)))

bgr_mean = [103.53, 116.28, 123.675]
noised_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='EfficientNetRandomCrop', scale=224),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(
            pad_val=[round(x) for x in bgr_mean], interpolation='bicubic')),
    dict(type='PackInputs'),
]
unlabeled_root = 'data/unlabeled'
# The images the teacher labels: the test pipeline, no noise.
unlabeled_dataset = dict(
    type='CustomDataset',
    data_root=unlabeled_root,
    with_label=False,
    pipeline=_base_.test_pipeline)

labeled_batch_size = 8
unlabeled_ratio = 3
batch_size = labeled_batch_size * (1 + unlabeled_ratio)  # 32 per GPU
train_dataloader = dict(
    _delete_=True,
    batch_size=batch_size,
    num_workers=5,
    persistent_workers=True,
    sampler=dict(
        type='MultiSourceSampler',
        batch_size=batch_size,
        source_ratio=[1, unlabeled_ratio],
        shuffle=True,
        seed=0),
    batch_sampler=dict(type='MultiSourceBatchSampler'),
    dataset=dict(
        type='ConcatDataset',
        # The unlabeled folder has no class names.
        ignore_keys=['classes'],
        datasets=[
            dict(
                type='OneHotLabels',
                num_classes=1000,
                dataset=dict(
                    type='ImageNet',
                    data_root='data/imagenet',
                    split='train',
                    pipeline=noised_pipeline)),
            # The file is set by tools/noisy_student.py for each round.
            dict(
                type='PseudoLabeledDataset',
                pseudo_label_file='',
                dataset=dict(unlabeled_dataset, pipeline=noised_pipeline)),
        ]))

custom_hooks = [
    dict(
        type='EMAHook',
        ema_type='SpatialTemporalSmoothing',
        preserve_prob=0.5,
        momentum=0.0001)
]
