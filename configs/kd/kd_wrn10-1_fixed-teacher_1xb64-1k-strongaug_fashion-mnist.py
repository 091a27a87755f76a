# Knowledge distillation under strong augmentation on Fashion-MNIST, from a
# fixed teacher: the no-KD baseline (wrn10-1_1xb64-1k-strongaug_...) plus
# the KL to a trained wrn10-1_1xb64-1k_fashion-mnist.py classifier's
# prediction on the same augmented images (weight 1, temperature 1; the
# teacher in evaluation mode). Set the teacher's checkpoint (the KD study
# does):
#   --cfg-options model.teacher.checkpoint=<teacher work dir>/iter_1000.pth
# The teacher config path is relative to the repository root.
_base_ = ['./wrn10-1_1xb64-1k-strongaug_fashion-mnist.py']

model = dict(
    type='KDClassifier',
    teacher=dict(
        type='FrozenTeacher',
        config='configs/kd/wrn10-1_1xb64-1k_fashion-mnist.py',
        checkpoint='',
        mode='eval'),
    distill_cfg=dict(kd_weight=1.0, temperature=1.0),
    semi_test_cfg=dict(predict_on='student'))
val_cfg = dict(type='TeacherStudentValLoop')
