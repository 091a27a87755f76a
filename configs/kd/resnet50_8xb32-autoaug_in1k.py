# The no-KD baseline of the KD recipes: mmpretrain's ResNet-50 recipe
# (`resnet50_8xb32_in1k.py`: its model, 100-epoch step schedule, runtime)
# trained with mmpretrain's AutoAugment ImageNet pipeline
# (`imagenet_bs64_autoaug.py`) at 8 GPUs x 32 images (the schedule's batch
# of 256). Nothing here is mmsts's: it is composed from mmpretrain's bases,
# as the KD configs that inherit from it.
_base_ = [
    'mmpretrain::_base_/models/resnet50.py',
    'mmpretrain::_base_/datasets/imagenet_bs64_autoaug.py',
    'mmpretrain::_base_/schedules/imagenet_bs256.py',
    'mmpretrain::_base_/default_runtime.py',
]

train_dataloader = dict(batch_size=32)
val_dataloader = dict(batch_size=32)
test_dataloader = val_dataloader
