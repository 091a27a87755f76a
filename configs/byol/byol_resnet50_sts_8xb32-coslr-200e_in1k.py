# BYOL ResNet-50, ImageNet-1k, 200 epochs, with Spatial-Temporal Smoothing
# (STS, Huang et al., NeurIPS 2021) of the target network.
#
# Differences from mmpretrain's `byol_resnet50_16xb256-coslr-200e_in1k.py`:
# - the target network (`target_net`) is updated by STS instead of EMA:
#   each parameter tensor is preserved with probability 0.7 (the paper's p
#   for BYOL) and otherwise moved toward the online network with mmpretrain's
#   own momentum schedule (`base_momentum=0.01`, cosine-annealed to 0, i.e.
#   the paper's teacher weight 0.99 -> 1);
# - 8 GPUs x 32 images = 256 images per step, the paper's setting, instead of
#   16 x 256 = 4096; the LARS learning rate is scaled linearly from
#   4.8 @ 4096 to 4.8 * 256 / 4096 = 0.3, and `auto_scale_lr` uses the same
#   base batch size 256, so another batch size is rescaled consistently
#   (`tools/train.py --auto-scale-lr`);
# - `collate_fn` is redefined: inheriting `mmpretrain::` configs tags it with
#   `_scope_`, which `default_collate` does not accept.
#
# Train:
#   bash tools/dist_train.sh \
#       configs/byol/byol_resnet50_sts_8xb32-coslr-200e_in1k.py 8
_base_ = 'mmpretrain::byol/byol_resnet50_16xb256-coslr-200e_in1k.py'

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

train_dataloader = dict(
    batch_size=32, collate_fn=dict(_delete_=True, type='default_collate'))

optim_wrapper = dict(optimizer=dict(lr=4.8 * 256 / 4096))
auto_scale_lr = dict(base_batch_size=256)

# The momentum and its cosine schedule are those of mmpretrain's BYOL
# (`model.base_momentum`); only the smoothing changes.
custom_hooks = [dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.7)]
