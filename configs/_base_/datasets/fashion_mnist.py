# Fashion-MNIST (Xiao et al., 2017): 60,000 training and 10,000 test 28 x 28
# grey images of 10 kinds of clothing, read by mmpretrain's `FashionMNIST`
# from the four unzipped idx files in `data_root`:
#   data/fashion_mnist/train-images-idx3-ubyte
#   data/fashion_mnist/train-labels-idx1-ubyte
#   data/fashion_mnist/t10k-images-idx3-ubyte
#   data/fashion_mnist/t10k-labels-idx1-ubyte
# `make data-fashion-mnist` writes them from Debian's `dataset-fashion-mnist`
# package (tools/dataset_converters/prepare_fashion_mnist.py; it installs the
# package when it can, and otherwise says which files to put where).
#
# Nothing is downloaded: `download=False`. With a file missing, mmpretrain
# 1.2 raises "RuntimeError: Cannot find FashionMNIST dataset in
# data/fashion_mnist" (its hint about `download=True` does not apply here:
# run `make data-fashion-mnist` instead).
#
# mmpretrain 1.2's MNIST data sets choose the files by `test_mode`, not by
# `split`: the validation and test sets set both, or they would read the
# training files.
dataset_type = 'FashionMNIST'
data_root = 'data/fashion_mnist'
num_classes = 10
img_size = 28

# Mean and std of the 60,000 training pixels (measured: 72.94 and 90.02).
# The images are single-channel (28, 28) arrays: PackInputs makes them
# 1 x 28 x 28 tensors, so there is one mean and no channel order.
data_preprocessor = dict(
    type='ClsDataPreprocessor',
    num_classes=num_classes,
    mean=[72.94],
    std=[90.02],
    to_rgb=False)

train_pipeline = [dict(type='PackInputs')]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=128,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=True),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='train',
        download=False,
        pipeline=train_pipeline))

val_dataloader = dict(
    batch_size=500,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    collate_fn=dict(type='default_collate'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        split='test',
        test_mode=True,
        download=False,
        pipeline=test_pipeline))
val_evaluator = dict(type='Accuracy', topk=(1, ))

test_dataloader = val_dataloader
test_evaluator = val_evaluator
