# Controlled baseline of `byol_resnet50_sts_8xb32-coslr-200e_in1k.py`: Temporal
# Moving Average (TMA, plain EMA) alone. Differs ONLY in `preserve_prob=0`:
# every tensor of the target network is updated at every step with the same
# momentum schedule (0.01 cosine-annealed to 0), which is exactly mmpretrain's
# BYOL update, run through the same STS code path, batch size and learning
# rate.
#
# Train:
#   bash tools/dist_train.sh \
#       configs/byol/byol_resnet50_tma_8xb32-coslr-200e_in1k.py 8
_base_ = './byol_resnet50_sts_8xb32-coslr-200e_in1k.py'

custom_hooks = [dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.0)]
