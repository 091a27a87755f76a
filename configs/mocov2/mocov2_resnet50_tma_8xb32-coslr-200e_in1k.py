# Controlled baseline of `mocov2_resnet50_sts_8xb32-coslr-200e_in1k.py`:
# Temporal Moving Average (TMA, plain EMA) alone. Differs ONLY in
# `preserve_prob=0`: every tensor of the key encoder is updated at every step
# with the same constant momentum 0.001, which is exactly mmpretrain's MoCo v2
# update, run through the same STS code path.
#
# Train:
#   bash tools/dist_train.sh \
#       configs/mocov2/mocov2_resnet50_tma_8xb32-coslr-200e_in1k.py 8
_base_ = './mocov2_resnet50_sts_8xb32-coslr-200e_in1k.py'

custom_hooks = [dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.0)]
