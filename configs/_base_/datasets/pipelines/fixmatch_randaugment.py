# FixMatch's strong augmentation list, shared by the semi-supervised data
# set configs (semi_cifar10.py, semi_cifar100.py, semi_digits.py).
# FixMatch's RandAugment (the variant with a random magnitude per op): two
# ops drawn with replacement from this list, each always applied, with a
# magnitude drawn uniformly from its range. mmpretrain's RandAugment maps
# magnitude m ~ U(0, magnitude_level) to
# m / total_level * (range[1] - range[0]) + range[0], i.e. U(range) with
# magnitude_level = total_level and magnitude_std='inf'. The enhance ops apply
# the factor 1 + m, and `random_negative_prob` (0.5 by default) flips the
# sign of m, so the FixMatch ranges become:
fixmatch_randaug_policies = [
    dict(type='AutoContrast', prob=1.0),
    # Brightness, Color, Contrast, Sharpness: factor in [0.05, 0.95].
    dict(
        type='Brightness',
        magnitude_range=(-0.95, -0.05),
        random_negative_prob=0.0,
        prob=1.0),
    dict(
        type='ColorTransform',
        magnitude_range=(-0.95, -0.05),
        random_negative_prob=0.0,
        prob=1.0),
    dict(
        type='Contrast',
        magnitude_range=(-0.95, -0.05),
        random_negative_prob=0.0,
        prob=1.0),
    dict(type='Equalize', prob=1.0),
    dict(type='Compose', transforms=[]),  # Identity
    # bits = ceil(U(3, 7)) is 4, 5, 6 or 7 with equal odds: FixMatch's
    # int(U(4, 8)).
    dict(type='Posterize', magnitude_range=(3, 7), prob=1.0),
    dict(type='Rotate', magnitude_range=(0, 30), prob=1.0),  # +-30 degrees
    dict(
        type='Sharpness',
        magnitude_range=(-0.95, -0.05),
        random_negative_prob=0.0,
        prob=1.0),
    # Shear and translation (a fraction of the size) in [-0.3, 0.3].
    dict(
        type='Shear',
        magnitude_range=(0, 0.3),
        direction='horizontal',
        interpolation='nearest',
        prob=1.0),
    dict(
        type='Shear',
        magnitude_range=(0, 0.3),
        direction='vertical',
        interpolation='nearest',
        prob=1.0),
    dict(type='Solarize', magnitude_range=(0, 256), prob=1.0),  # threshold
    dict(
        type='Translate',
        magnitude_range=(0, 0.3),
        direction='horizontal',
        prob=1.0),
    dict(
        type='Translate',
        magnitude_range=(0, 0.3),
        direction='vertical',
        prob=1.0),
]
