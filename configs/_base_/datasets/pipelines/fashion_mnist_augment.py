# FixMatch's weak and strong augmentations for Fashion-MNIST's 28 x 28 grey
# images (numpy arrays, one channel), on top of fashion_mnist.py (the data
# set), shared by the semi-supervised
# (semi_fashion_mnist.py) and the distillation (configs/kd) configs:
#   weak_pipeline: flip, pad-and-crop by 1/8 of the size (reflect), pack;
#   strong_pipeline: the same, then FixMatch's RandAugment (2 ops of random
#   magnitude) and Cutout (up to half the size, filled with the mean grey).
_base_ = ['../fashion_mnist.py', './fixmatch_randaugment.py']

# Mean grey level of the training pixels (fashion_mnist.py): Cutout fill.
mean_grey = 73

# FixMatch's RandAugment list (pipelines/fixmatch_randaugment.py) for grey
# images. mmcv's AutoContrast, Equalize, Contrast and ColorTransform need
# 3-channel images (they index channels or call bgr2gray) and fail on the
# 28 x 28 arrays, so these four are done on a PIL 'L' image by torchvision:
#   AutoContrast, Equalize -> torchvision's, with p = 1;
#   Contrast -> ColorJitter(contrast=(0.05, 0.95)): the factor is drawn from
#               FixMatch's range [0.05, 0.95], as the mmcv op would;
#   ColorTransform -> identity: a grey image has no saturation to change.
# The other ten ops are FixMatch's, unchanged.


def _on_pil(transform):
    return dict(
        type='Compose',
        transforms=[
            dict(type='mmpretrain.NumpyToPIL', to_rgb=False), transform,
            dict(type='mmpretrain.PILToNumpy', to_bgr=False)
        ])


_grey_ops = dict(
    AutoContrast=_on_pil(
        dict(type='mmpretrain.torchvision/RandomAutocontrast', p=1.0)),
    Equalize=_on_pil(
        dict(type='mmpretrain.torchvision/RandomEqualize', p=1.0)),
    Contrast=_on_pil(
        dict(
            type='mmpretrain.torchvision/ColorJitter',
            contrast=(0.05, 0.95))),
    ColorTransform=dict(type='Compose', transforms=[]))
fixmatch_randaug_policies = [
    _grey_ops.get(policy['type'], policy)
    for policy in _base_.fixmatch_randaug_policies
]

# Weak: horizontal flip (a flipped garment is the same garment), pad by
# 12.5 % (3 px) with reflection and crop back to 28 x 28.
img_size = _base_.img_size
weak_pipeline = [
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandomCrop',
        crop_size=img_size + 2 * (img_size // 8),
        pad_if_needed=True,
        padding_mode='reflect'),
    dict(type='RandomCrop', crop_size=img_size),
    dict(type='PackInputs'),
]
# Strong: the weak one, RandAugment (2 ops), then Cutout of a square of side
# U(0, 0.5) x 28 filled with the mean grey level.
strong_pipeline = [
    *weak_pipeline[:-1],
    dict(
        type='RandAugment',
        policies=fixmatch_randaug_policies,
        num_policies=2,
        magnitude_level=10,
        total_level=10,
        magnitude_std='inf',
        hparams=dict(pad_val=0)),
    dict(
        type='Cutout',
        magnitude_range=(0, img_size // 2),
        magnitude_level=10,
        total_level=10,
        magnitude_std='inf',
        pad_val=mean_grey,
        prob=1.0),
    dict(type='PackInputs'),
]
