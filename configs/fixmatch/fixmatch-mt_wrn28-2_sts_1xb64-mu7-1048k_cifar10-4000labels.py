# Mean-teacher FixMatch: the _base_ config below with the pseudo-labels
# predicted by its STS teacher on the weak views (no gradient) instead of
# by the model being trained; nothing else changed.
# This is not the original FixMatch (which uses its averaged model for
# evaluation only); README.md says what is known about the STS paper's
# choice. The teacher predicts in training mode (batch statistics of the
# weak views); for its running batch-norm statistics:
#   --cfg-options model.semi_train_cfg.teacher_mode=eval
_base_ = './fixmatch_wrn28-2_sts_1xb64-mu7-1048k_cifar10-4000labels.py'

model = dict(
    semi_train_cfg=dict(pseudo_label_source='teacher', teacher_mode='train'))
