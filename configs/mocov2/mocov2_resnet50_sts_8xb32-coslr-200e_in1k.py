# MoCo v2 ResNet-50, ImageNet-1k, 200 epochs, with Spatial-Temporal
# Smoothing (STS, Huang et al., NeurIPS 2021) of the key encoder.
#
# Differences from mmpretrain's `mocov2_resnet50_8xb32-coslr-200e_in1k.py`
# (whose recipe, 8 GPUs x 32 = 256 images per step, SGD lr 0.03, cosine, is
# kept unchanged):
# - the key encoder (`encoder_k`) is updated by STS instead of EMA: each
#   parameter tensor is preserved with probability 0.5 (the paper's p for
#   MoCo v2) and otherwise moved toward the query encoder with mmpretrain's
#   own constant momentum (`model.momentum=0.001`, teacher weight 0.999);
# - `collate_fn` is redefined: inheriting `mmpretrain::` configs tags it with
#   `_scope_`, which `default_collate` does not accept.
#
# Train:
#   bash tools/dist_train.sh \
#       configs/mocov2/mocov2_resnet50_sts_8xb32-coslr-200e_in1k.py 8
_base_ = 'mmpretrain::mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py'

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

train_dataloader = dict(collate_fn=dict(_delete_=True, type='default_collate'))

# The momentum (constant) is that of mmpretrain's MoCo v2 (`model.momentum`);
# only the smoothing changes.
custom_hooks = [dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.5)]
