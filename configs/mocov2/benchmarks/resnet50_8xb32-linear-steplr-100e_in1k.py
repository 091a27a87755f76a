# Linear evaluation on ImageNet-1k of a ResNet-50 pretrained by any config in
# configs/mocov2/ (STS, TMA or SE): mmpretrain's MoCo v2 linear-probe
# benchmark (frozen backbone, SGD lr 30, 8 GPUs x 32, steps at epochs 60 and
# 80, 100 epochs); only `auto_scale_lr` is added (see the end).
#
# Which encoder is evaluated is chosen by `init_cfg.prefix` below:
# - default, `prefix='backbone.'`: the QUERY encoder (the student, trained by
#   gradient descent), which official MoCo v2 and mmpretrain's MoCo v2 model
#   zoo number evaluate. Pass the pretraining checkpoint itself:
#
#   bash tools/dist_train.sh \
#       configs/mocov2/benchmarks/resnet50_8xb32-linear-steplr-100e_in1k.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=${PRETRAIN_CKPT}
#
# - option, `prefix='encoder_k.module.0.'`: the KEY encoder (the teacher,
#   smoothed by STS / TMA / SE): add
#   `model.backbone.init_cfg.prefix=encoder_k.module.0.` to the command.
#
# A backbone checkpoint written by tools/model_converters/extract_backbone.py
# has keys `backbone.<ResNet key>` whichever encoder it holds, so the default
# prefix loads it as it is: it is the query encoder with `--source student`
# and the key encoder with `--source teacher` (that tool's default).
_base_ = ('mmpretrain::mocov2/benchmarks/'
          'resnet50_8xb32-linear-steplr-100e_in1k.py')

# mmsts allow-lists MMEngine's checkpoint types for torch >= 2.6, so that a
# full pretraining checkpoint loads (a backbone checkpoint needs nothing).
custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            checkpoint='',  # <- the pretraining (or backbone) checkpoint
            prefix='backbone.')))  # query encoder; key: encoder_k.module.0.

# mmpretrain's benchmark has no `auto_scale_lr`: add the batch size its
# learning rate is meant for, so `--auto-scale-lr` rescales it correctly on
# other setups.
auto_scale_lr = dict(base_batch_size=256)
