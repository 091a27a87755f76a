# FixMatch, WRN-28-8, CIFAR-100 with 2500 labels (25 per class), STS
# teacher (p = 0.5). Batch: 64 labeled + 7 x 64 unlabeled images on 1 GPU.
#
# Train: python tools/train.py <this config> (see README.md).
_base_ = './_base_/fixmatch_wrn28-8_cifar100.py'

num_per_class = 25
labeled_dataset = _base_.labeled_dataset
labeled_dataset.num_per_class = num_per_class
train_dataloader = dict(
    dataset=dict(datasets=[labeled_dataset, _base_.unlabeled_dataset]))
