# FixMatch's optimisation (Sohn et al., NeurIPS 2020), iteration-based:
# SGD with Nesterov momentum 0.9, lr 0.03, no weight decay on normalisation
# layers and biases, 2^20 = 1,048,576 iterations, and the learning rate
# lr_k = 0.03 * cos(7 pi k / (16 K)) (FixMatchCosineLR). The weight decay is
# set by the data set's config (5e-4 on CIFAR-10, 1e-3 on CIFAR-100).
#
# Validation of the teacher and the student every 1,024 iterations (64k
# labeled images, FixMatch's evaluation interval): FixMatch reports the
# median of the last 20 evaluations, which
# tools/analysis/compare_runs.py computes from the run's scalar log. The
# best teacher checkpoint is kept as a convenience only (it is chosen on the
# test set).
max_iters = 2**20
val_interval = 1024
checkpoint_interval = 8 * val_interval

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(
        type='SGD', lr=0.03, momentum=0.9, weight_decay=5e-4, nesterov=True),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0))

param_scheduler = [
    dict(
        type='FixMatchCosineLR',
        num_cycles=7 / 16,
        by_epoch=False,
        begin=0,
        end=max_iters)
]

train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=val_interval)
# Reports teacher/accuracy/top1 and student/accuracy/top1.
val_cfg = dict(type='TeacherStudentValLoop')
# Tests the model named by model.semi_test_cfg.predict_on (the teacher).
test_cfg = dict()

default_scope = 'mmpretrain'
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(
        type='CheckpointHook',
        by_epoch=False,
        interval=checkpoint_interval,
        max_keep_ckpts=2,
        save_best='teacher/accuracy/top1',
        rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
)
log_processor = dict(by_epoch=False)

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=None, deterministic=False)
