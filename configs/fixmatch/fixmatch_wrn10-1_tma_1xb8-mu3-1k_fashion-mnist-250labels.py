# As fixmatch_wrn10-1_tma_1xb8-mu3-1k_fashion-mnist-40labels.py with 250 labels
# (25 per class, balanced).
_base_ = './fixmatch_wrn10-1_tma_1xb8-mu3-1k_fashion-mnist-40labels.py'

labeled_dataset = _base_.labeled_dataset
labeled_dataset.num_per_class = 25
train_dataloader = dict(
    dataset=dict(datasets=[labeled_dataset, _base_.unlabeled_dataset]))
