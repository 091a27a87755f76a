# The no-KD baseline of the Fashion-MNIST KD study: the classifier of
# wrn10-1_1xb64-1k_fashion-mnist.py trained with FixMatch's strong
# augmentation (RandAugment, 2 ops of random magnitude, then Cutout) instead
# of the weak one; nothing else changes.
_base_ = ['./wrn10-1_1xb64-1k_fashion-mnist.py']

train_dataloader = dict(dataset=dict(pipeline=_base_.strong_pipeline))
