# Semi-supervised digits for the CPU demo: FixMatch's batches (see
# semi_cifar10.py) on scikit-learn's 8x8 handwritten digits (the registered
# `Digits` data set, 1,297 training and 500 test images; nothing is
# downloaded), upsampled to 16 x 16 px.
#
# The augmentations are FixMatch's, adapted to digits: no flip (a flipped
# digit is another symbol, or none), geometric ops fill with the black
# background, Cutout fills with the mean grey level.
#
# A child config changes the labeled split like this (lists are not merged,
# so the two data sets are given again):
#   labeled_dataset = _base_.labeled_dataset
#   labeled_dataset.num_per_class = 10
#   train_dataloader = dict(
#       dataset=dict(datasets=[labeled_dataset, _base_.unlabeled_dataset]))
_base_ = ['./pipelines/fixmatch_randaugment.py']

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

dataset_type = 'Digits'
num_classes = 10
img_size = 16
# 4 labeled images per class: 40 labels, as FixMatch's smallest CIFAR-10 split.
num_per_class = 4
split_seed = 0
# B labeled and mu * B unlabeled images per iteration, small for a CPU.
labeled_batch_size = 16
mu = 3
batch_size = (1 + mu) * labeled_batch_size  # 64
# `train_dataloader.batch_size` and `train_dataloader.sampler.batch_size`
# must be equal (change both), else MultiSourceBatchSampler raises an error
# naming both when the data loader is built; `sampler.batch_size=None`
# follows the data loader's.
#
# The sampler's seed is fixed here, not taken from `randomness.seed`: the
# runner builds the sampler before it loads a checkpoint, so with
# `randomness.seed=None` (as in the FixMatch schedule) a resumed run would
# draw a new seed and train on other batches than the interrupted run would
# have. With a fixed seed, `--resume` continues the data stream exactly.
# `randomness.seed` still seeds the initialisation and the augmentations;
# for another data order, change this one too:
#   --cfg-options train_dataloader.sampler.seed=1
sampler_seed = 0

# Mean and std of the training digits (grey levels scaled to 0..255,
# replicated to 3 channels by the data set).
data_preprocessor = dict(
    type='MultiBranchDataPreprocessor',
    data_preprocessor=dict(
        type='ClsDataPreprocessor',
        num_classes=num_classes,
        mean=[78.0, 78.0, 78.0],
        std=[95.7, 95.7, 95.7],
        to_rgb=False))

# FixMatch's RandAugment list (pipelines/fixmatch_randaugment.py explains the
# magnitude ranges).
fixmatch_randaug_policies = _base_.fixmatch_randaug_policies

# Weak augmentation: upsample, pad by 12.5 % (2 px) with reflection and
# crop back (in two steps, see `reflect_pad_crop` in semi_cifar10.py).
reflect_pad_crop = [
    dict(
        type='RandomCrop',
        crop_size=img_size + 2 * (img_size // 8),
        pad_if_needed=True,
        padding_mode='reflect'),
    dict(type='RandomCrop', crop_size=img_size),
]
weak_pipeline = [
    dict(type='Resize', scale=img_size, interpolation='bilinear'),
    *reflect_pad_crop,
    dict(type='PackInputs'),
]
# Strong augmentation: the weak one, RandAugment, then Cutout of a square of
# side U(0, 0.5) x img_size.
strong_pipeline = [
    dict(type='Resize', scale=img_size, interpolation='bilinear'),
    *reflect_pad_crop,
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
        pad_val=78,
        prob=1.0),
    dict(type='PackInputs'),
]

branch_field = ['sup', 'unsup_weak', 'unsup_strong']
labeled_pipeline = [
    dict(type='MultiBranch', branch_field=branch_field, sup=weak_pipeline),
]
unlabeled_pipeline = [
    dict(
        type='MultiBranch',
        branch_field=branch_field,
        unsup_weak=weak_pipeline,
        unsup_strong=strong_pipeline),
]
test_pipeline = [
    dict(type='Resize', scale=img_size, interpolation='bilinear'),
    dict(type='PackInputs'),
]

labeled_dataset = dict(
    type='LabeledSubset',
    num_per_class=num_per_class,
    seed=split_seed,
    index_file=None,
    dataset=dict(type=dataset_type, split='train', pipeline=labeled_pipeline))
unlabeled_dataset = dict(
    type=dataset_type, split='train', pipeline=unlabeled_pipeline)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(
        type='MultiSourceSampler',
        batch_size=batch_size,
        source_ratio=[1, mu],
        shuffle=True,
        seed=sampler_seed),
    # Checks `sampler.batch_size` against `batch_size` when the data loader
    # is built (a mismatch would mix the sources in other proportions).
    batch_sampler=dict(type='MultiSourceBatchSampler'),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='ConcatDataset', datasets=[labeled_dataset, unlabeled_dataset]))

val_dataloader = dict(
    batch_size=250,
    num_workers=0,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(type=dataset_type, split='test', pipeline=test_pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, ))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
