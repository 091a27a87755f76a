# Linear evaluation on ImageNet-1k of a ResNet-50 pretrained by any config in
# configs/mocov2/ (STS, TMA or SE): mmpretrain's MoCo v2 linear-probe
# benchmark (frozen backbone, SGD lr 30, 8 GPUs x 32, steps at epochs 60 and
# 80, 100 epochs); only `auto_scale_lr` is added (see the end).
#
# The pretrained weights come from ONE option, the path of a backbone
# checkpoint written by `tools/model_converters/extract_backbone.py`
# (`--source teacher` for the smoothed key encoder, `--source student` for
# the query encoder); its keys are `backbone.<ResNet key>`, which
# `prefix='backbone.'` below strips:
#
#   bash tools/dist_train.sh \
#       configs/mocov2/benchmarks/resnet50_8xb32-linear-steplr-100e_in1k.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=${BACKBONE_CKPT}
#
# (A full pretraining checkpoint also loads, but `backbone.` is then the
# query encoder: extract the teacher to evaluate it.)
_base_ = ('mmpretrain::mocov2/benchmarks/'
          'resnet50_8xb32-linear-steplr-100e_in1k.py')

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
auto_scale_lr = dict(base_batch_size=256)
