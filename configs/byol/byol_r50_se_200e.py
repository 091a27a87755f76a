# Controlled baseline of `byol_r50_sts_200e.py`: Spatial Ensemble (SE) alone.
# Differs ONLY in the momentum: `momentum=1` with a constant schedule, so the
# tensors that are not preserved (probability 1 - 0.7) are copied from the
# online network instead of averaged with it. Same p = 0.7, batch size and
# learning rate.
#
# Train: bash tools/dist_train.sh configs/byol/byol_r50_se_200e.py 8
_base_ = './byol_r50_sts_200e.py'

custom_hooks = [
    dict(
        type='SpatialTemporalSmoothingHook',
        preserve_prob=0.7,
        momentum=1.0,
        momentum_schedule='constant')
]
