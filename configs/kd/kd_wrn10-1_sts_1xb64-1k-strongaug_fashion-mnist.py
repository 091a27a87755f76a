# Knowledge distillation under strong augmentation on Fashion-MNIST from an
# online teacher: a Spatial-Temporal Smoothing average of the student
# (p = 0.5, weight 0.01 on the student per step: a 100-step horizon in a
# 1,000-step run), predicting in evaluation mode on the same augmented
# images. Everything else is the fixed-teacher config's.
_base_ = ['./kd_wrn10-1_fixed-teacher_1xb64-1k-strongaug_fashion-mnist.py']

model = dict(
    teacher=dict(
        _delete_=True,
        type='SpatialTemporalSmoothing',
        preserve_prob=0.5,
        momentum=0.01),
    distill_cfg=dict(teacher_mode='eval'))
