# Controlled baseline of `byol_r50_sts_200e.py`: Temporal Moving Average
# (TMA, plain EMA) alone. Differs ONLY in `preserve_prob=0`: every tensor of
# the target network is updated at every step with the same momentum schedule
# (0.01 cosine-annealed to 0), which is exactly mmpretrain's BYOL update, run
# through the same STS code path, batch size and learning rate.
#
# Train: bash tools/dist_train.sh configs/byol/byol_r50_tma_200e.py 8
_base_ = './byol_r50_sts_200e.py'

custom_hooks = [dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.0)]
