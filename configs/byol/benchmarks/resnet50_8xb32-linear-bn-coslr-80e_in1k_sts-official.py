# Linear evaluation on ImageNet-1k with the protocol of the official STS code
# (tengteng95/Spatial_Ensemble, `spatial_ensemble/exps/sts/
# linear_eval_exp_byol.py` on top of `linear_eval_exp.py`, run by
# `spatial_ensemble/tools/eval.py`), for the
# `byol_resnet50_*-official_8xb32-coslr-200e_in1k.py` pretraining configs and
# the number that repository reports (72.7 % top-1 after 200 epochs of STS;
# their number, not measured by mmsts).
#
# Read from the official source (commit e94a54b) and reproduced here:
# - the TEACHER is evaluated: eval.py loads `module.teacher_encoder.*` of the
#   pretraining checkpoint. Here `prefix='target_net.module.0.'` takes
#   mmpretrain BYOL's teacher backbone from the pretraining checkpoint (pass
#   that checkpoint); the student (online network) is the option
#   `model.backbone.init_cfg.prefix=backbone.`, which is also the prefix for
#   a checkpoint written by tools/model_converters/extract_backbone.py;
# - frozen ResNet-50 in eval mode (BN statistics frozen too): frozen_stages=4;
# - classifier `nn.Sequential(nn.Linear(2048, 1000), nn.BatchNorm1d(1000))`
#   on the average-pooled features, the Linear initialised N(0, 0.01) with
#   zero bias, cross-entropy on the BatchNorm's output: `LinearNeck` with a
#   BN1d, then `ClsHead`, which applies the loss to the neck's output;
# - SGD, lr 0.2 per 256 images (linear scaling, `auto_scale_lr`), momentum
#   0.9, weight decay 0, no nesterov, on the classifier only;
# - cosine from 0.2 to 0 over 80 epochs, updated every iteration, no
#   warm-up;
# - 256 images per step (8 GPUs x 32), the last incomplete batch dropped;
# - training images: RandomResizedCrop(224) and horizontal flip; test
#   images: shorter side resized to 256, centre crop 224; ImageNet RGB mean
#   and std (mmpretrain's `imagenet_bs32_pil_resize` pipelines, which use
#   Pillow as torchvision does);
# - evaluation every 10 epochs.
# NOT verified: that the official ResNet-50 (`resnet_mbn`, "vanilla" BN)
# matches mmpretrain's `ResNet` layer for layer (both are torchvision-style
# ResNet-50s); whether the reported 72.7 % is the last or the best of the
# 8 evaluations (eval.py logs both; report both, e.g. with
# tools/analysis/compare_runs.py); the ImageNet copy and image decoding of
# their internal platform. Their per-GPU evaluation batch (100) does not
# change the result (the model is in eval mode).
#
#   bash tools/dist_train.sh \
#       configs/byol/benchmarks/resnet50_8xb32-linear-bn-coslr-80e_in1k_sts-official.py 8 \
#       --cfg-options model.backbone.init_cfg.checkpoint=${PRETRAIN_CKPT}
#
# mmpretrain's MoCo v2 benchmark is the closest base (8 GPUs x 32, SGD,
# frozen ResNet-50, the Pillow ImageNet pipelines); the rest is overridden.
_base_ = ('mmpretrain::mocov2/benchmarks/'
          'resnet50_8xb32-linear-steplr-100e_in1k.py')

# mmsts allow-lists MMEngine's checkpoint types for torch >= 2.6, so that a
# full pretraining checkpoint loads.
custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        frozen_stages=4,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='',  # <- the pretraining checkpoint goes here
            prefix='target_net.module.0.')),  # teacher; student: backbone.
    neck=dict(
        _delete_=True,
        type='LinearNeck',
        in_channels=2048,
        out_channels=1000,
        gap_dim=2,  # average pooling of the (N, 2048, H, W) feature map
        norm_cfg=dict(type='BN1d'),
        act_cfg=None,
        init_cfg=dict(type='Normal', std=0.01, bias=0., layer='Linear')),
    head=dict(
        _delete_=True,
        type='ClsHead',
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)))

train_dataloader = dict(batch_size=32, drop_last=True)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='SGD', lr=0.2, momentum=0.9, weight_decay=0., nesterov=False))

param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        T_max=80,
        eta_min=0.,
        by_epoch=True,
        begin=0,
        end=80,
        convert_to_iter_based=True)
]

train_cfg = dict(max_epochs=80, val_interval=10)

auto_scale_lr = dict(base_batch_size=256)
