# Controlled baseline of `byol_resnet50_sts-official_8xb32-coslr-200e_in1k.py`
# (the official STS code's optimisation recipe): Temporal Moving Average (TMA,
# plain EMA) alone. Differs ONLY in `preserve_prob=0`: every tensor of the
# target network is moved toward the online network at every step, with the
# same momentum schedule (0.01 cosine-annealed to 0, teacher weight 0.99 -> 1).
# This is the BYOL baseline of the official recipe, run through the same STS
# code path.
#
# Train:
#   bash tools/dist_train.sh \
#       configs/byol/byol_resnet50_tma-official_8xb32-coslr-200e_in1k.py 8
_base_ = './byol_resnet50_sts-official_8xb32-coslr-200e_in1k.py'

custom_hooks = [
    dict(
        type='SpatialTemporalSmoothingHook',
        preserve_prob=0.0,
        momentum=0.01,
        momentum_schedule='cosine',
        end_momentum=0.0,
        buffers='keep')
]
