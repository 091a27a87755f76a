# Linear evaluation on ImageNet-1k of a ResNet-50 pretrained by any config in
# configs/byol/ (STS, TMA, SE or the official recipe): mmpretrain's BYOL
# linear-probe benchmark (frozen backbone, LARS lr 1.6, 8 GPUs x 512, cosine,
# 90 epochs); only `auto_scale_lr` is added (see the end).
#
# The pretrained weights come from ONE option, the path of a backbone
# checkpoint written by `tools/model_converters/extract_backbone.py`
# (`--source teacher` for the smoothed target network, `--source student` for
# the online network); its keys are `backbone.<ResNet key>`, which
# `prefix='backbone.'` below strips:
#
#   bash tools/dist_train.sh \
#       configs/byol/benchmarks/resnet50_8xb512-linear-coslr-90e_in1k.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=${BACKBONE_CKPT}
#
# (A full pretraining checkpoint also loads, but `backbone.` is then the
# online network: extract the teacher to evaluate it.)
_base_ = 'mmpretrain::byol/benchmarks/resnet50_8xb512-linear-coslr-90e_in1k.py'

# mmsts allow-lists MMEngine's checkpoint types for torch >= 2.6, so that a
# full pretraining checkpoint loads too (a backbone checkpoint needs nothing).
custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            checkpoint='',  # <- the backbone checkpoint goes here
            prefix='backbone.')))

# mmpretrain's benchmark has no `auto_scale_lr`: add the batch size its
# learning rate is meant for, so `--auto-scale-lr` rescales it correctly on
# other setups.
auto_scale_lr = dict(base_batch_size=4096)
