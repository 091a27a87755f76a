# Knowledge distillation under AutoAugment (Wei et al., "Circumventing
# Outliers of AutoAugment with Knowledge Distillation", ECCV 2020) with a
# fixed teacher: mmpretrain's trained ResNet-50 (76.55 % top-1) predicts on
# the same augmented images as the student, and its soft output (KL,
# temperature T, weight lambda) joins the ground truth's cross-entropy.
# Everything else is the no-KD baseline's (resnet50_8xb32-autoaug_in1k.py).
# The teacher's weights are downloaded by MMEngine at start-up; set
# `model.teacher.checkpoint` to a local file where there is no internet.
_base_ = ['./resnet50_8xb32-autoaug_in1k.py']

custom_imports = dict(imports=['mmsts'], allow_failed_imports=False)

model = dict(
    type='KDClassifier',
    teacher=dict(
        type='FrozenTeacher',
        config='mmpretrain::resnet/resnet50_8xb32_in1k.py',
        checkpoint='https://download.openmmlab.com/mmclassification/v0/'
        'resnet/resnet50_8xb32_in1k_20210831-ea4938fc.pth',
        mode='eval'),
    distill_cfg=dict(kd_weight=1.0, temperature=1.0),
    # Validate the student (the deployed model); the teacher is fixed.
    semi_test_cfg=dict(predict_on='student'))
