# FixMatch's schedule shrunk to a 1,000-step run on one CPU core (the
# Fashion-MNIST studies, docs/studies.md): learning rate 0.1 with FixMatch's
# cos(7 pi k / 16 K) decay over the 1,000 steps, evaluation every 100 steps,
# a checkpoint every 200 steps for --resume (only the latest kept),
# deterministic single-process runs.
_base_ = ['./fixmatch_schedule_1048k.py']

max_iters = 1000
val_interval = 100
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
optim_wrapper = dict(optimizer=dict(lr=0.1))
default_hooks = dict(
    # Evaluations are logged with the iteration as their step (not the
    # epoch, always 0 in an iteration-based loop), so that the evaluations
    # of a resumed run can be merged with those before the interruption.
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    checkpoint=dict(
        type='CheckpointHook',
        by_epoch=False,
        interval=200,
        max_keep_ckpts=1,
        save_best=None))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0, deterministic=True)
