# Controlled baseline of `mocov2_r50_sts_200e.py`: Temporal Moving Average
# (TMA, plain EMA) alone. Differs ONLY in `preserve_prob=0`: every tensor of
# the key encoder is updated at every step with the same constant momentum
# 0.001, which is exactly mmpretrain's MoCo v2 update, run through the same
# STS code path.
#
# Train: bash tools/dist_train.sh configs/mocov2/mocov2_r50_tma_200e.py 8
_base_ = './mocov2_r50_sts_200e.py'

custom_hooks = [dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.0)]
