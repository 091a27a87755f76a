# BYOL ResNet-50 + STS with the optimisation recipe of the official STS code
# (tengteng95/Spatial_Ensemble, `exps/sts/exp_8_2080ti/
# sts_200e_32batch_1mm_099_exp.py`), for comparison with the number that
# repository reports for it: 72.7 % top-1 linear evaluation after 200 epochs
# (their number, not measured by mmsts).
#
# Differences from `byol_resnet50_sts_8xb32-coslr-200e_in1k.py` (mmpretrain's
# LARS recipe):
# - SGD, lr 0.05 for 256 images per step (8 GPUs x 32), momentum 0.9,
#   weight decay 1e-4 on every parameter (no LARS, no BN/bias exclusions);
# - 10 warm-up epochs, linear from lr 1e-6 (start factor 1e-6 / 0.05), then
#   cosine to 0 over the remaining 190 epochs, both updated every iteration;
# - the last incomplete batch of an epoch is dropped, as their loader does;
# - the STS settings are spelled out: p = 0.7, teacher weight 0.99 annealed
#   to 1 with a cosine, i.e. momentum 0.01 -> 0 (the same as the base);
# - the teacher keeps its own BN running statistics (`buffers='keep'`): the
#   official teacher's BN layers are never copied from or averaged with the
#   student's; they only follow the teacher's own forward passes (there with
#   momentum2-teacher's MomentumBatchNorm, whose cosine-decayed BN momentum
#   mmpretrain's BN does not have). mmpretrain's teachers copy the student's
#   statistics at every update instead.
# The model, loss (equal to theirs up to a constant) and augmentations are
# mmpretrain's BYOL ones.
#
# Train:
#   bash tools/dist_train.sh \
#       configs/byol/byol_resnet50_sts-official_8xb32-coslr-200e_in1k.py 8
_base_ = './byol_resnet50_sts_8xb32-coslr-200e_in1k.py'

train_dataloader = dict(drop_last=True)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='SGD', lr=0.05, momentum=0.9, weight_decay=1e-4))

param_scheduler = [
    dict(
        type='LinearLR',
        start_factor=1e-6 / 0.05,
        by_epoch=True,
        begin=0,
        end=10,
        convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        T_max=190,
        eta_min=0.,
        by_epoch=True,
        begin=10,
        end=200,
        convert_to_iter_based=True)
]

auto_scale_lr = dict(base_batch_size=256)

custom_hooks = [
    dict(
        type='SpatialTemporalSmoothingHook',
        preserve_prob=0.7,
        momentum=0.01,
        momentum_schedule='cosine',
        end_momentum=0.0,
        buffers='keep')
]
