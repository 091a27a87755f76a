"""configs/_base_/datasets/fashion_mnist.py with mmpretrain's own
``FashionMNIST`` on tiny idx files written in the real format."""
import os.path as osp
import struct

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmpretrain.registry import DATASETS, MODELS

from conftest import REPO_ROOT

CONFIG = osp.join(REPO_ROOT, 'configs', '_base_', 'datasets',
                  'fashion_mnist.py')
FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
         't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')


def write_idx(path, array):
    """An idx file as the Fashion-MNIST files are (unsigned bytes, big-endian
    dimensions after the magic number ``0x0000080<ndim>``)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, 'wb') as f:
        f.write(struct.pack('>I', 0x800 + array.ndim))
        f.write(struct.pack(f'>{array.ndim}I', *array.shape))
        f.write(array.tobytes())


def make_fashion_mnist(root, num_train=12, num_test=5, seed=0):
    """The four unzipped files mmpretrain reads; returns the arrays."""
    rng = np.random.default_rng(seed)
    data = {}
    for split, n in (('train', num_train), ('t10k', num_test)):
        images = rng.integers(0, 256, (n, 28, 28), np.uint8)
        labels = rng.integers(0, 10, n, np.uint8)
        write_idx(osp.join(root, f'{split}-images-idx3-ubyte'), images)
        write_idx(osp.join(root, f'{split}-labels-idx1-ubyte'), labels)
        data[split] = (images, labels)
    return data


@pytest.fixture
def no_download(monkeypatch):
    """Fail the test if mmpretrain tries to download anything."""
    import mmpretrain.datasets.mnist as mnist

    def refuse(*args, **kwargs):
        raise AssertionError(f'tried to download {args} {kwargs}')

    monkeypatch.setattr(mnist, 'download_and_extract_archive', refuse)


def _dataset_cfg(loader_cfg, data_root):
    return dict(loader_cfg.dataset, data_root=str(data_root))


def test_settings():
    cfg = Config.fromfile(CONFIG)
    for loader in (cfg.train_dataloader, cfg.val_dataloader,
                   cfg.test_dataloader):
        assert loader.dataset.type == 'FashionMNIST'
        assert loader.dataset.download is False
        assert loader.dataset.data_root == 'data/fashion_mnist'
    assert cfg.train_dataloader.dataset.split == 'train'
    assert not cfg.train_dataloader.dataset.get('test_mode', False)
    assert cfg.val_dataloader.dataset.split == 'test'
    assert cfg.val_dataloader.dataset.test_mode is True
    assert cfg.data_preprocessor.num_classes == 10
    assert len(cfg.data_preprocessor.mean) == 1  # grey images


def test_reads_the_idx_files_through_the_config(tmp_path, no_download):
    data = make_fashion_mnist(str(tmp_path))
    cfg = Config.fromfile(CONFIG)
    train = DATASETS.build(_dataset_cfg(cfg.train_dataloader, tmp_path))
    val = DATASETS.build(_dataset_cfg(cfg.val_dataloader, tmp_path))
    assert len(train) == 12 and len(val) == 5
    assert train.metainfo['classes'][0] == 'T-shirt/top'
    for dataset, split in ((train, 'train'), (val, 't10k')):
        images, labels = data[split]
        for i in (0, len(dataset) - 1):
            sample = dataset[i]
            # 28 x 28 grey images, one channel, pixels and labels unchanged.
            assert sample['inputs'].shape == (1, 28, 28)
            assert sample['inputs'].dtype == torch.uint8
            np.testing.assert_array_equal(sample['inputs'][0].numpy(),
                                          images[i])
            assert int(sample['data_samples'].gt_label) == labels[i]


def test_dataloader_and_preprocessor(tmp_path, no_download):
    make_fashion_mnist(str(tmp_path))
    cfg = Config.fromfile(CONFIG)
    loader_cfg = cfg.val_dataloader.copy()
    loader_cfg.dataset = _dataset_cfg(loader_cfg, tmp_path)
    loader_cfg.update(num_workers=0, persistent_workers=False, batch_size=4)
    # As in a runner of a config that inherits mmpretrain's default_runtime.
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        loader = Runner.build_dataloader(loader_cfg)
    batch = next(iter(loader))
    assert len(batch['inputs']) == 4
    preprocessor = MODELS.build(cfg.data_preprocessor)
    out = preprocessor(batch)
    assert out['inputs'].shape == (4, 1, 28, 28)
    assert out['inputs'].dtype == torch.float32
    expected = (batch['inputs'][0].float() - 72.94) / 90.02
    torch.testing.assert_close(out['inputs'][0], expected)


def test_split_alone_would_read_the_training_files(tmp_path, no_download):
    """Why the config sets ``test_mode``: mmpretrain 1.2's MNIST data sets
    choose the files by it, not by ``split``."""
    make_fashion_mnist(str(tmp_path))
    cfg = Config.fromfile(CONFIG)
    val_cfg = _dataset_cfg(cfg.val_dataloader, tmp_path)
    val_cfg.pop('test_mode')
    assert len(DATASETS.build(val_cfg)) == 12


@pytest.mark.parametrize('missing', FILES)
def test_a_missing_file_fails_without_downloading(tmp_path, no_download,
                                                  missing):
    make_fashion_mnist(str(tmp_path))
    (tmp_path / missing).unlink()
    cfg = Config.fromfile(CONFIG)
    with pytest.raises(RuntimeError, match='Cannot find FashionMNIST'):
        DATASETS.build(_dataset_cfg(cfg.train_dataloader, tmp_path))
