# Semi-supervised CIFAR-100 as in FixMatch: semi_cifar10.py (same batches,
# augmentations and FixMatch RandAugment list, same fixed sampler seed and
# batch-size check, see there) on CIFAR-100.
#
# Data: the python version of CIFAR-100 (cifar-100-python.tar.gz) extracted
# to data/cifar100/cifar-100-python (nothing is downloaded).
#
# Labeled images per class: 4 / 25 / 100 are FixMatch's 400 / 2500 / 10000
# label splits. A child config changes the split as for semi_cifar10.py:
#   labeled_dataset = _base_.labeled_dataset
#   labeled_dataset.num_per_class = 25  # 2500 labels
#   train_dataloader = dict(
#       dataset=dict(datasets=[labeled_dataset, _base_.unlabeled_dataset]))
_base_ = './semi_cifar10.py'

dataset_type = 'CIFAR100'
data_root = 'data/cifar100'
num_classes = 100
num_per_class = 4
split_seed = 0

# mmpretrain's CIFAR-100 normalisation (RGB, 0..255).
data_preprocessor = dict(
    data_preprocessor=dict(
        num_classes=num_classes,
        mean=[129.304, 124.070, 112.434],
        std=[68.170, 65.392, 70.418]))

labeled_dataset = _base_.labeled_dataset
labeled_dataset.num_per_class = num_per_class
labeled_dataset.seed = split_seed
labeled_dataset.dataset.type = dataset_type
labeled_dataset.dataset.data_root = data_root

unlabeled_dataset = _base_.unlabeled_dataset
unlabeled_dataset.type = dataset_type
unlabeled_dataset.data_root = data_root

train_dataloader = dict(
    dataset=dict(datasets=[labeled_dataset, unlabeled_dataset]))

val_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root))
test_dataloader = val_dataloader
