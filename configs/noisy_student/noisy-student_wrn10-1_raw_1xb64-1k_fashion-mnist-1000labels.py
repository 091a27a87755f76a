# The control of the Noisy Student configs: no smoothing, the raw weights of
# the student become the next teacher; nothing else changed.
_base_ = ['./noisy-student_wrn10-1_sts_1xb64-1k_fashion-mnist-1000labels.py']

custom_hooks = []
