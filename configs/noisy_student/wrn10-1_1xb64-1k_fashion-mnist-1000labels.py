# Round 0 of Noisy Student on Fashion-MNIST: the first teacher, trained on
# the labeled images only, 100 per class (1,000 labels; a fixed balanced
# split, LabeledSubset seed 0) with the weak augmentation; otherwise the
# WRN-10-1 classifier of configs/kd/wrn10-1_1xb64-1k_fashion-mnist.py
# (64 images per step, 1,000 steps).
_base_ = ['../kd/wrn10-1_1xb64-1k_fashion-mnist.py']

num_per_class = 100
labeled_dataset = dict(
    type='LabeledSubset',
    num_per_class=num_per_class,
    seed=0,
    index_file=None,
    dataset=dict(
        type=_base_.dataset_type,
        data_root=_base_.data_root,
        split='train',
        download=False,
        pipeline=_base_.weak_pipeline))
train_dataloader = dict(dataset=dict(_delete_=True, **labeled_dataset))
