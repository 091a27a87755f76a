# Round 0 of the ImageNet Noisy Student recipe: the first teacher is
# mmpretrain's own EfficientNet-B0 recipe, trained on the labeled ImageNet
# images (it is also the no-Noisy-Student baseline).
_base_ = ['mmpretrain::efficientnet/efficientnet-b0_8xb32_in1k.py']
