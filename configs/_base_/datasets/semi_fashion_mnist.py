# Semi-supervised Fashion-MNIST for FixMatch on a CPU: a balanced labeled
# subset (`LabeledSubset`, `num_per_class` images of each of the 10 classes,
# drawn with `split_seed`) of the 60,000 training images, all 60,000 as the
# unlabeled set, FixMatch's weak and strong augmentations, B labeled and
# mu * B unlabeled images per step (MultiSourceSampler), as semi_digits.py.
#
# The images are read by mmpretrain's own `FashionMNIST` through
# fashion_mnist.py (data root, download=False, test_mode of the test set,
# 1-channel normalisation): nothing here copies that class. They stay
# 28 x 28 single-channel arrays; every op of FixMatch's RandAugment list
# works on them (tests/test_configs/test_fashion_mnist_studies.py).
#
# Evaluation: the first `num_val` of the 10,000 test images (the test file is
# not sorted by class), to keep the ~20 evaluations of a 5-minute run cheap;
# set `val_dataloader.dataset.indices=None` for all of them.
#
# A child config changes the labeled split like this (lists are not merged,
# so the two data sets are given again):
#   labeled_dataset = _base_.labeled_dataset
#   labeled_dataset.num_per_class = 25
#   train_dataloader = dict(
#       dataset=dict(datasets=[labeled_dataset, _base_.unlabeled_dataset]))
# and the split seed from the command line with
#   --cfg-options train_dataloader.dataset.datasets.0.seed=1
_base_ = ['./pipelines/fashion_mnist_augment.py']

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

# 4 labeled images per class: 40 labels.
num_per_class = 4
split_seed = 0
labeled_batch_size = 8
mu = 3
batch_size = (1 + mu) * labeled_batch_size  # 32
# Fixed, not `randomness.seed`, so that `--resume` continues the data
# stream exactly (see semi_digits.py); a study sets it per seed with
#   --cfg-options train_dataloader.sampler.seed=<seed>
sampler_seed = 0
num_val = 1000

data_preprocessor = dict(
    _delete_=True,
    type='MultiBranchDataPreprocessor',
    data_preprocessor=_base_.data_preprocessor)

# FixMatch's weak and strong augmentations of the 28 x 28 grey images:
# pipelines/fashion_mnist_augment.py.
weak_pipeline = _base_.weak_pipeline
strong_pipeline = _base_.strong_pipeline

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

_train_set = dict(
    type=_base_.dataset_type,
    data_root=_base_.data_root,
    split='train',
    download=False)
labeled_dataset = dict(
    type='LabeledSubset',
    num_per_class=num_per_class,
    seed=split_seed,
    index_file=None,
    dataset=dict(_train_set, pipeline=labeled_pipeline))
unlabeled_dataset = dict(_train_set, pipeline=unlabeled_pipeline)

train_dataloader = dict(
    _delete_=True,
    batch_size=batch_size,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(
        type='MultiSourceSampler',
        batch_size=batch_size,
        source_ratio=[1, mu],
        shuffle=True,
        seed=sampler_seed),
    batch_sampler=dict(type='MultiSourceBatchSampler'),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type='ConcatDataset', datasets=[labeled_dataset, unlabeled_dataset]))

val_dataloader = dict(
    _delete_=True,
    batch_size=500,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='pseudo_collate'),
    dataset=dict(
        type=_base_.dataset_type,
        data_root=_base_.data_root,
        split='test',
        test_mode=True,
        download=False,
        indices=num_val,
        pipeline=test_pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
