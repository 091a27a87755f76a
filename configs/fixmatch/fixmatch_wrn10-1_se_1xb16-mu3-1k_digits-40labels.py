# Spatial Ensemble alone (SE) on the digits demo: the STS config with
# momentum=1 (the selected fragments are copied from the student), nothing
# else changed.
_base_ = './fixmatch_wrn10-1_sts_1xb16-mu3-1k_digits-40labels.py'

model = dict(teacher=dict(momentum=1.0))
