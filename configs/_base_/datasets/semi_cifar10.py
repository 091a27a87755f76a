# Semi-supervised CIFAR-10 as in FixMatch (Sohn et al., NeurIPS 2020):
# every iteration takes B labeled images and mu * B unlabeled ones; the
# unlabeled ones give a weak and a strong view of the same image.
#
# Data: the python version of CIFAR-10 (cifar-10-python.tar.gz) extracted to
# data/cifar10/cifar-10-batches-py (nothing is downloaded).
#
# After MultiSourceSampler, pseudo_collate and MultiBranchDataPreprocessor,
# `inputs` and `data_samples` are dicts of branches: 'sup' (B labeled
# images), 'unsup_weak' and 'unsup_strong' (mu * B unlabeled images each).
# Validation and test use the 10,000 test images, unaugmented.
#
# A child config changes the labeled split like this (lists are not merged,
# so the two data sets are given again):
#   labeled_dataset = _base_.labeled_dataset
#   labeled_dataset.num_per_class = 25  # 250 labels
#   train_dataloader = dict(
#       dataset=dict(datasets=[labeled_dataset, _base_.unlabeled_dataset]))
# or, on the command line:
#   --cfg-options train_dataloader.dataset.datasets.0.num_per_class=25
_base_ = ['./pipelines/fixmatch_randaugment.py']

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

dataset_type = 'CIFAR10'
data_root = 'data/cifar10'
num_classes = 10
# Labeled images per class: 4 / 25 / 400 are FixMatch's 40 / 250 / 4000-label
# splits. The split is drawn with `split_seed`; set `index_file` on the
# labeled data set to save it (or to load a saved one).
num_per_class = 4
split_seed = 0
# B labeled images and mu * B unlabeled images per iteration, on one GPU.
# With N GPUs, set labeled_batch_size = 64 // N to keep FixMatch's batch.
labeled_batch_size = 64
mu = 7
batch_size = (1 + mu) * labeled_batch_size  # 512: 64 labeled + 448 unlabeled
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

# mmpretrain's CIFAR normalisation (RGB, 0..255), applied to every branch.
data_preprocessor = dict(
    type='MultiBranchDataPreprocessor',
    data_preprocessor=dict(
        type='ClsDataPreprocessor',
        num_classes=num_classes,
        mean=[125.307, 122.961, 113.8575],
        std=[51.5865, 50.847, 51.255],
        to_rgb=False))

# FixMatch's RandAugment list (pipelines/fixmatch_randaugment.py explains the
# magnitude ranges).
fixmatch_randaug_policies = _base_.fixmatch_randaug_policies

# Weak augmentation: pad by 12.5 % (4 px) with reflection, crop back to
# 32 px, flip. mmpretrain 1.2.0's RandomCrop ignores `padding_mode` when
# `padding` is given (it pads with `pad_val`), but honours it with
# `pad_if_needed`: the first RandomCrop only pads (32 -> 40 px, reflected),
# the second crops.
reflect_pad_crop = [
    dict(
        type='RandomCrop',
        crop_size=40,
        pad_if_needed=True,
        padding_mode='reflect'),
    dict(type='RandomCrop', crop_size=32),
]
weak_pipeline = [
    *reflect_pad_crop,
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
# Strong augmentation: the weak one, RandAugment, then Cutout of a square of
# side U(0, 0.5) x 32 px filled with the mean colour (geometric ops fill 128).
strong_pipeline = [
    *reflect_pad_crop,
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies=fixmatch_randaug_policies,
        num_policies=2,
        magnitude_level=10,
        total_level=10,
        magnitude_std='inf',
        hparams=dict(pad_val=128)),
    dict(
        type='Cutout',
        magnitude_range=(0, 16),
        magnitude_level=10,
        total_level=10,
        magnitude_std='inf',
        pad_val=(125, 123, 114),
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
test_pipeline = [dict(type='PackInputs')]

labeled_dataset = dict(
    type='LabeledSubset',
    num_per_class=num_per_class,
    seed=split_seed,
    index_file=None,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        download=False,
        pipeline=labeled_pipeline))
# FixMatch uses every training image as unlabeled, the labeled ones too; the
# labels stay in the data samples, only to log the pseudo-label accuracy.
unlabeled_dataset = dict(
    type=dataset_type,
    data_root=data_root,
    split='train',
    download=False,
    pipeline=unlabeled_pipeline)

train_dataloader = dict(
    batch_size=batch_size,
    num_workers=4,
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
    batch_size=256,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='test',
        download=False,
        pipeline=test_pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, ))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
