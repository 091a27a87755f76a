# Controlled baseline of `mocov2_resnet50_sts_8xb32-coslr-200e_in1k.py`:
# Spatial Ensemble (SE) alone. Differs ONLY in the momentum: `momentum=1` with
# a constant schedule, so the tensors that are not preserved (probability 1 -
# 0.5) are copied from the query encoder instead of averaged with it. Same p =
# 0.5.
#
# Train:
#   bash tools/dist_train.sh \
#       configs/mocov2/mocov2_resnet50_se_8xb32-coslr-200e_in1k.py 8
_base_ = './mocov2_resnet50_sts_8xb32-coslr-200e_in1k.py'

custom_hooks = [
    dict(
        type='SpatialTemporalSmoothingHook',
        preserve_prob=0.5,
        momentum=1.0,
        momentum_schedule='constant')
]
