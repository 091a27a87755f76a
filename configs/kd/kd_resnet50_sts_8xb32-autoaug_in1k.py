# Knowledge distillation under AutoAugment with an online teacher: a
# Spatial-Temporal Smoothing average of the student itself (p = 0.5,
# weight 0.0002 on the student per step, MMEngine EMAHook's default: a
# horizon of ~5,000 steps, one epoch at 8 x 32). The teacher predicts in
# evaluation mode (its BN statistics are copies of the student's) on the
# same augmented images; the first update copies the student, so the KD
# term starts at zero. Both models are validated. The TMA baseline is
# kd_resnet50_tma_8xb32-autoaug_in1k.py; the no-KD baseline
# resnet50_8xb32-autoaug_in1k.py.
_base_ = ['./kd_resnet50_fixed-teacher_8xb32-autoaug_in1k.py']

model = dict(
    teacher=dict(
        _delete_=True,
        type='SpatialTemporalSmoothing',
        preserve_prob=0.5,
        momentum=0.0002),
    distill_cfg=dict(teacher_mode='eval'))

val_cfg = dict(type='TeacherStudentValLoop')
test_cfg = dict(type='TeacherStudentValLoop')
