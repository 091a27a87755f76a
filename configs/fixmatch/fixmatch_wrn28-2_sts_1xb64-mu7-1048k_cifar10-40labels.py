# FixMatch, WRN-28-2, CIFAR-10 with 40 labels (4 per class), STS
# teacher (p = 0.5). Batch: 64 labeled + 7 x 64 unlabeled images on 1 GPU.
#
# Train: python tools/train.py <this config> (see README.md).
_base_ = './_base_/fixmatch_wrn28-2_cifar10.py'

num_per_class = 4
labeled_dataset = _base_.labeled_dataset
labeled_dataset.num_per_class = num_per_class
train_dataloader = dict(
    dataset=dict(datasets=[labeled_dataset, _base_.unlabeled_dataset]))
