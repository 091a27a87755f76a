# kd_resnet50_fixed-teacher_8xb32-autoaug_in1k.py with RandAugment instead
# of AutoAugment (mmpretrain's 'timm_increasing' policies, 2 ops of
# magnitude 9 +- 0.5 out of 10, as in its RandAugment recipes).
_base_ = ['./kd_resnet50_fixed-teacher_8xb32-autoaug_in1k.py']

bgr_mean = [103.53, 116.28, 123.675]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224),
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
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
