# Controlled baseline of `byol_resnet50_sts-official_8xb32-coslr-200e_in1k.py`
# (the official STS code's optimisation recipe): Spatial Ensemble (SE) alone.
# Differs ONLY in the momentum: `momentum=1` with a constant schedule, so the
# tensors that are not preserved (probability 1 - 0.7) are copied from the
# online network instead of averaged with it. Same p = 0.7. (A cosine schedule
# from 1 would average again as it anneals, so the schedule is constant;
# `end_momentum` is kept only so that the hook's other keys stay identical, and
# is unused.)
#
# Train:
#   bash tools/dist_train.sh \
#       configs/byol/byol_resnet50_se-official_8xb32-coslr-200e_in1k.py 8
_base_ = './byol_resnet50_sts-official_8xb32-coslr-200e_in1k.py'

custom_hooks = [
    dict(
        type='SpatialTemporalSmoothingHook',
        preserve_prob=0.7,
        momentum=1.0,
        momentum_schedule='constant',
        end_momentum=0.0,
        buffers='keep')
]
