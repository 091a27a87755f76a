# noisy-student_efficientnet-b0_sts_8xb32_in1k.py with an equal-or-larger
# student, as the paper grows it: EfficientNet-B1, trained at the B0
# recipe's 224-pixel crops (mmpretrain's B1 recipe uses 240), so that the
# teacher and the student see the same images.
_base_ = ['./noisy-student_efficientnet-b0_sts_8xb32_in1k.py']

model = dict(
    backbone=dict(arch='b1'),
    head=dict(in_channels=1280))
