"""LabeledSubset, MultiBranchDataPreprocessor and the semi-supervised base
configs, end to end on tiny data sets in the real CIFAR pickle format."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, make_cifar_pickles, requires_cuda
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmpretrain.datasets import BaseDataset, CIFAR10
from mmpretrain.registry import DATASETS, MODELS
from mmpretrain.structures import DataSample

import mmsts.datasets.semi as semi
from mmsts.datasets import LabeledSubset
from mmsts.models import MultiBranchDataPreprocessor

CONFIGS = osp.join(REPO_ROOT, 'configs', '_base_', 'datasets')
PER_CLASS = 6  # training images per class of the tiny CIFARs


@pytest.fixture(scope='module')
def cifar10_root(tmp_path_factory):
    return make_cifar_pickles(
        str(tmp_path_factory.mktemp('cifar10')), 10, per_class=PER_CLASS)


@pytest.fixture
def cifar10(cifar10_root, no_cifar_md5):
    # No serialisation: its `gc.collect()` costs ~0.5 s per data set here.
    return dict(
        type='CIFAR10',
        data_root=cifar10_root,
        split='train',
        download=False,
        serialize_data=False)


@pytest.fixture
def scope():
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


def semi_cfg(name, data_root=None):
    """A semi-supervised base config, reading ``data_root``, built without
    data loader workers."""
    cfg = Config.fromfile(osp.join(CONFIGS, name))
    loaders = [cfg.train_dataloader, cfg.val_dataloader]
    datasets = list(cfg.train_dataloader.dataset.datasets)
    datasets = [datasets[0].dataset, datasets[1], cfg.val_dataloader.dataset]
    for loader in loaders:
        loader.num_workers = 0
        loader.persistent_workers = False
    if data_root is not None:
        for dataset in datasets:
            dataset.data_root = data_root
    return cfg


# ------------------------------------------------------------ LabeledSubset


def test_split_is_balanced_and_indexes_the_full_set(cifar10):
    subset = LabeledSubset(dataset=cifar10, num_per_class=4, seed=0)
    full = subset.dataset
    assert len(subset) == 40 and len(full) == 10 * PER_CLASS
    labels = full.get_gt_labels()
    assert np.bincount(labels[subset.indices]).tolist() == [4] * 10
    assert subset.indices == sorted(set(subset.indices))
    assert subset.get_gt_labels().tolist() == labels[subset.indices].tolist()
    assert subset.metainfo == full.metainfo
    for i in (0, 17, 39):
        j = subset.indices[i]
        assert subset.get_data_info(i)['sample_idx'] == j
        assert subset.get_cat_ids(i) == [int(labels[j])]
        assert np.array_equal(subset[i]['img'], full[j]['img'])


def test_same_seed_same_split_other_seed_other_split(cifar10):

    def indices(seed):
        return LabeledSubset(
            dataset=cifar10, num_per_class=3, seed=seed).indices

    assert indices(0) == indices(0)
    assert indices(0) != indices(1)


def test_index_file_round_trip(cifar10, tmp_path):
    index_file = str(tmp_path / 'splits' / 'cifar10_4x10.json')
    saved = LabeledSubset(
        dataset=cifar10, num_per_class=4, seed=0, index_file=index_file)
    with open(index_file) as f:
        content = json.load(f)
    assert content['indices'] == saved.indices
    assert content['num_per_class'] == 4 and content['seed'] == 0
    assert content['labels'] == saved.get_gt_labels().tolist()

    # The file, not the seed, decides the split once it exists.
    assert LabeledSubset(
        dataset=cifar10, num_per_class=4, seed=1).indices != saved.indices
    loaded = LabeledSubset(
        dataset=cifar10, num_per_class=4, seed=1, index_file=index_file)
    assert loaded.indices == saved.indices


def test_stale_index_file_is_refused(cifar10, tmp_path, no_cifar_md5):
    index_file = str(tmp_path / 'split.json')
    LabeledSubset(
        dataset=cifar10, num_per_class=4, seed=0, index_file=index_file)

    # Same size, other labels: a file made for another data set.
    other_root = make_cifar_pickles(
        str(tmp_path / 'other'), 10, per_class=PER_CLASS, seed=1)
    other = dict(cifar10, data_root=other_root)
    with pytest.raises(ValueError, match='does not match') as info:
        LabeledSubset(
            dataset=other, num_per_class=4, seed=0, index_file=index_file)
    assert index_file in str(info.value) and 'label' in str(info.value)

    bigger_root = make_cifar_pickles(
        str(tmp_path / 'bigger'), 10, per_class=PER_CLASS + 1)
    with pytest.raises(ValueError, match='made for 60 samples'):
        LabeledSubset(
            dataset=dict(cifar10, data_root=bigger_root),
            num_per_class=4,
            index_file=index_file)

    with pytest.raises(ValueError, match='`num_per_class`=3'):
        LabeledSubset(dataset=cifar10, num_per_class=3, index_file=index_file)

    with open(index_file, 'w') as f:
        f.write('{"indices": [1, 2')
    with pytest.raises(ValueError, match='not a LabeledSubset index file'):
        LabeledSubset(dataset=cifar10, num_per_class=4, index_file=index_file)


def rewrite_index_file(index_file, **changes):
    with open(index_file) as f:
        content = json.load(f)
    content.update(changes)
    with open(index_file, 'w') as f:
        json.dump(content, f)
    return content


@pytest.mark.parametrize('key', ['indices', 'labels'])
@pytest.mark.parametrize('make_bad', [
    lambda i: i + 0.5,
    lambda i: float(i),
    lambda i: str(i),
    lambda i: True,
])
def test_non_integer_entries_of_an_index_file_are_refused(
        cifar10, tmp_path, key, make_bad):
    """``int()`` used to truncate e.g. 12.5 to 12: a hand-edited file loaded
    silently."""
    index_file = str(tmp_path / 'split.json')
    saved = LabeledSubset(
        dataset=cifar10, num_per_class=4, index_file=index_file)
    values = list(saved.indices if key ==
                  'indices' else saved.get_gt_labels().tolist())
    bad = make_bad(values[1])
    values[1] = bad
    rewrite_index_file(index_file, **{key: values})
    with pytest.raises(ValueError) as info:
        LabeledSubset(dataset=cifar10, num_per_class=4, index_file=index_file)
    message = str(info.value)
    assert index_file in message and f'`{key}`' in message
    assert repr(bad) in message


def test_numpy_integers_in_an_index_file_are_accepted(cifar10, tmp_path,
                                                      monkeypatch):
    index_file = str(tmp_path / 'split.json')
    saved = LabeledSubset(
        dataset=cifar10, num_per_class=4, index_file=index_file)
    with open(index_file) as f:
        content = json.load(f)
    content['indices'] = [np.int64(i) for i in content['indices']]
    content['labels'] = [np.int32(i) for i in content['labels']]
    monkeypatch.setattr(semi.json, 'load', lambda f: content)
    loaded = LabeledSubset(
        dataset=cifar10, num_per_class=4, index_file=index_file)
    assert loaded.indices == saved.indices
    assert all(type(i) is int for i in loaded.indices)


@pytest.mark.parametrize('trailing_slash', [False, True])
def test_index_file_that_is_a_directory_is_refused(cifar10, tmp_path,
                                                   trailing_slash):
    """It used to write ``<dir>.tmp<pid>`` next to the directory, fail to
    rename it onto the directory, and leave it there."""
    folder = tmp_path / 'splits'
    folder.mkdir()
    index_file = str(folder) + (os.sep if trailing_slash else '')
    with pytest.raises(ValueError, match='is a directory') as info:
        LabeledSubset(dataset=cifar10, num_per_class=4, index_file=index_file)
    assert repr(index_file) in str(info.value)
    assert os.listdir(tmp_path) == ['splits'] and os.listdir(folder) == []

    missing = str(tmp_path / 'new') + os.sep  # a directory-to-be
    with pytest.raises(ValueError, match='is a directory'):
        LabeledSubset(dataset=cifar10, num_per_class=4, index_file=missing)
    assert os.listdir(tmp_path) == ['splits']


def test_failed_save_leaves_nothing_behind(cifar10, tmp_path, monkeypatch):

    def broken_dump(content, f):
        f.write('{"indices": [')
        raise OSError('No space left on device')

    monkeypatch.setattr(semi.json, 'dump', broken_dump)
    with pytest.raises(OSError, match='No space'):
        LabeledSubset(
            dataset=cifar10,
            num_per_class=4,
            index_file=str(tmp_path / 'split.json'))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('num_per_class', [0, -1, 2.5, '4', True])
def test_num_per_class_must_be_a_positive_int(cifar10, num_per_class):
    with pytest.raises(ValueError, match='`num_per_class`') as info:
        LabeledSubset(dataset=cifar10, num_per_class=num_per_class)
    assert repr(num_per_class) in str(info.value)


@pytest.mark.parametrize('kwargs, error', [
    (dict(seed=-1), ValueError),
    (dict(seed='0'), TypeError),
    (dict(index_file=3), TypeError),
])
def test_bad_seed_or_index_file(cifar10, kwargs, error):
    key = next(iter(kwargs))
    with pytest.raises(error, match=f'`{key}`') as info:
        LabeledSubset(dataset=cifar10, num_per_class=1, **kwargs)
    assert repr(kwargs[key]) in str(info.value)


def test_more_labels_than_a_class_has(cifar10):
    with pytest.raises(ValueError) as info:
        LabeledSubset(dataset=cifar10, num_per_class=PER_CLASS + 1)
    message = str(info.value)
    assert f'`num_per_class`={PER_CLASS + 1}' in message
    assert "'airplane'" in message and f'has {PER_CLASS} samples' in message


def test_dataset_without_labels_is_refused(imagenet_root):
    unlabeled = dict(
        type='CustomDataset',
        data_root=imagenet_root,
        data_prefix='train',
        with_label=False)
    with pytest.raises(ValueError, match='with_label=False'):
        LabeledSubset(dataset=unlabeled, num_per_class=1)

    class NoLabels(BaseDataset):

        def load_data_list(self):
            return [dict(img=np.zeros((4, 4, 3), np.uint8))] * 4

    with pytest.raises(ValueError, match="no 'gt_label'"):
        LabeledSubset(dataset=NoLabels(ann_file=''), num_per_class=1)


def test_multi_label_dataset_is_refused():

    class MultiLabel(BaseDataset):

        def load_data_list(self):
            return [dict(img=np.zeros((4, 4, 3), np.uint8), gt_label=[0, 1])]

    with pytest.raises(ValueError, match='single-label'):
        LabeledSubset(dataset=MultiLabel(ann_file=''), num_per_class=1)


def test_lazy_init_and_registry(cifar10):
    subset = DATASETS.build(
        dict(
            type='LabeledSubset',
            dataset=cifar10,
            num_per_class=2,
            lazy_init=True))
    assert not subset._fully_initialized
    assert len(subset) == 20 and subset._fully_initialized
    assert 'num_per_class=2' in repr(subset)


# ------------------------------------------------ MultiBranchDataPreprocessor


def cls_preprocessor():
    return dict(
        type='ClsDataPreprocessor',
        mean=[100., 110., 120.],
        std=[50., 60., 70.],
        to_rgb=False)


def packed(value, label):
    sample = DataSample().set_gt_label(label)
    return torch.full((3, 4, 4), value, dtype=torch.uint8), sample


def test_preprocessor_drops_none_and_preprocesses_each_branch():
    pre = MultiBranchDataPreprocessor(cls_preprocessor())
    sup = [packed(10, 1), packed(20, 2)]
    unsup = [packed(30, 3), packed(40, 4), packed(50, 5)]
    batch = pseudo_collate([
        dict(
            inputs=dict(sup=x, unsup=None, empty=None),
            data_samples=dict(sup=s, unsup=None, empty=None)) for x, s in sup
    ] + [
        dict(
            inputs=dict(sup=None, unsup=x, empty=None),
            data_samples=dict(sup=None, unsup=s, empty=None)) for x, s in unsup
    ])
    out = pre(batch, training=True)
    mean = torch.tensor([100., 110., 120.]).view(1, 3, 1, 1)
    std = torch.tensor([50., 60., 70.]).view(1, 3, 1, 1)
    for branch, items in (('sup', sup), ('unsup', unsup)):
        raw = torch.stack([x for x, _ in items]).float()
        assert out['inputs'][branch].dtype == torch.float32
        torch.testing.assert_close(out['inputs'][branch], (raw - mean) / std)
        assert [s.gt_label.item() for s in out['data_samples'][branch]
                ] == [s.gt_label.item() for _, s in items]
    assert out['inputs']['empty'] is None
    assert out['data_samples']['empty'] == []


def test_preprocessor_plain_batch_is_the_wrapped_output():
    pre = MultiBranchDataPreprocessor(cls_preprocessor())
    inner = MODELS.build(cls_preprocessor())
    items = [packed(v, v % 3) for v in (5, 60, 200)]

    def batch():
        return pseudo_collate(
            [dict(inputs=x, data_samples=s) for x, s in items])

    for training in (False, True):
        got, want = pre(batch(), training), inner(batch(), training)
        assert torch.equal(got['inputs'], want['inputs'])
        assert [s.gt_label for s in got['data_samples']
                ] == [s.gt_label for s in want['data_samples']]


def test_preprocessor_moves_the_wrapped_one():
    pre = MultiBranchDataPreprocessor(cls_preprocessor())
    pre.to('meta')
    assert pre.data_preprocessor.device.type == 'meta'
    assert pre.data_preprocessor.mean.device.type == 'meta'


@requires_cuda('test_preprocessor_moves_the_wrapped_one covers the device '
               'bookkeeping on CPU')
def test_preprocessor_on_cuda():
    pre = MultiBranchDataPreprocessor(cls_preprocessor()).cuda()
    batch = pseudo_collate([
        dict(inputs=dict(sup=x), data_samples=dict(sup=s))
        for x, s in [packed(1, 0), packed(2, 1)]
    ])
    out = pre(batch, training=True)
    assert out['inputs']['sup'].is_cuda
    assert out['data_samples']['sup'][0].gt_label.is_cuda


def test_preprocessor_bad_argument():
    with pytest.raises(TypeError, match='`data_preprocessor`'):
        MultiBranchDataPreprocessor(data_preprocessor='ClsDataPreprocessor')


# -------------------------------------------------------- base configs, e2e


def test_semi_cifar10_config_end_to_end(cifar10_root, no_cifar_md5, scope):
    """Tiny CIFAR-10 pickles -> CIFAR10(download=False) -> LabeledSubset +
    ConcatDataset -> MultiBranch -> MultiSourceSampler -> pseudo_collate ->
    MultiBranchDataPreprocessor, with the base config as it is."""
    cfg = semi_cfg('semi_cifar10.py', cifar10_root)
    B, mu = cfg.labeled_batch_size, cfg.mu
    assert (B, mu, cfg.train_dataloader.batch_size) == (64, 7, 512)
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    labeled, unlabeled = loader.dataset.datasets
    assert isinstance(labeled, LabeledSubset) and len(labeled) == 40
    assert isinstance(unlabeled, CIFAR10) and len(unlabeled) == 60
    batch = next(iter(loader))

    # The collated batch: B labeled items, then mu * B unlabeled ones.
    for branch, filled in (('sup', range(B)), ('unsup_weak',
                                               range(B, (1 + mu) * B)),
                           ('unsup_strong', range(B, (1 + mu) * B))):
        is_set = [x is not None for x in batch['inputs'][branch]]
        assert [i for i, s in enumerate(is_set) if s] == list(filled)

    pre = MODELS.build(cfg.data_preprocessor)
    assert isinstance(pre, MultiBranchDataPreprocessor)
    out = pre(batch, training=True)
    shapes = {k: tuple(v.shape) for k, v in out['inputs'].items()}
    assert shapes == {
        'sup': (B, 3, 32, 32),
        'unsup_weak': (mu * B, 3, 32, 32),
        'unsup_strong': (mu * B, 3, 32, 32)
    }
    assert all(v.dtype == torch.float32 for v in out['inputs'].values())
    samples = out['data_samples']
    assert {
        k: len(v)
        for k, v in samples.items()
    } == {
        'sup': B,
        'unsup_weak': mu * B,
        'unsup_strong': mu * B
    }
    # Labeled samples come from the labeled split, with their labels.
    gt = unlabeled.get_gt_labels()
    for s in samples['sup']:
        assert s.sample_idx in labeled.indices
        assert s.gt_label.item() == gt[s.sample_idx]
    # Weak and strong views pair up image by image.
    weak_ids = [s.sample_idx for s in samples['unsup_weak']]
    assert weak_ids == [s.sample_idx for s in samples['unsup_strong']]
    assert len(set(weak_ids)) == len(unlabeled)  # 448 draws cover all 60
    assert not torch.equal(out['inputs']['unsup_weak'],
                           out['inputs']['unsup_strong'])


def test_semi_cifar10_val_batch_is_plain(cifar10_root, no_cifar_md5, scope):
    cfg = semi_cfg('semi_cifar10.py', cifar10_root)
    loader = Runner.build_dataloader(cfg.val_dataloader, seed=0)
    assert loader.dataset.split == 'test' and len(loader.dataset) == 20
    batch = next(iter(loader))
    out = MODELS.build(cfg.data_preprocessor)(batch, training=False)
    want = MODELS.build(cfg.data_preprocessor.data_preprocessor)(
        next(iter(loader)), training=False)
    assert out['inputs'].shape == (20, 3, 32, 32)
    assert torch.equal(out['inputs'], want['inputs'])


def test_semi_cifar100_config(tmp_path, no_cifar_md5, scope):
    root = make_cifar_pickles(str(tmp_path), 100, per_class=5)
    cfg = semi_cfg('semi_cifar100.py', root)
    assert cfg.data_preprocessor.data_preprocessor.num_classes == 100
    assert cfg.train_dataloader.sampler.source_ratio == [1, 7]
    # Inherited: the batch-size check and the fixed sampler seed.
    assert cfg.train_dataloader.batch_sampler.type == 'MultiSourceBatchSampler'
    assert cfg.train_dataloader.sampler.seed == 0
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    labeled, unlabeled = dataset.datasets
    assert type(labeled.dataset).__name__ == 'CIFAR100'
    assert type(unlabeled).__name__ == 'CIFAR100'
    assert len(labeled) == 400 and len(unlabeled) == 500
    assert np.bincount(labeled.get_gt_labels()).tolist() == [4] * 100
    assert dataset[0]['inputs']['sup'].shape == (3, 32, 32)
    assert dataset[400]['inputs']['unsup_strong'].shape == (3, 32, 32)
    val = DATASETS.build(cfg.val_dataloader.dataset)
    assert val.split == 'test' and len(val) == 200


def test_child_config_changes_the_split(cifar10_root, no_cifar_md5, scope,
                                        tmp_path):
    child = tmp_path / 'child.py'
    child.write_text(f"_base_ = [{osp.join(CONFIGS, 'semi_cifar10.py')!r}]\n"
                     'labeled_dataset = _base_.labeled_dataset\n'
                     'labeled_dataset.num_per_class = 2\n'
                     f'labeled_dataset.dataset.data_root = {cifar10_root!r}\n'
                     'unlabeled_dataset = _base_.unlabeled_dataset\n'
                     f'unlabeled_dataset.data_root = {cifar10_root!r}\n'
                     'train_dataloader = dict(dataset=dict(\n'
                     '    datasets=[labeled_dataset, unlabeled_dataset]))\n')
    cfg = Config.fromfile(str(child))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert len(dataset.datasets[0]) == 20
    assert cfg.train_dataloader.sampler.type == 'MultiSourceSampler'

    cfg.merge_from_dict(
        {'train_dataloader.dataset.datasets.0.num_per_class': 3})
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    assert len(dataset.datasets[0]) == 30


def test_semi_digits_config_end_to_end(scope):
    cfg = semi_cfg('semi_digits.py')
    B, mu = cfg.labeled_batch_size, cfg.mu
    loader = Runner.build_dataloader(cfg.train_dataloader, seed=0)
    labeled, unlabeled = loader.dataset.datasets
    assert len(labeled) == 40 and len(unlabeled) == 1297
    out = MODELS.build(cfg.data_preprocessor)(
        next(iter(loader)), training=True)
    shapes = {k: tuple(v.shape) for k, v in out['inputs'].items()}
    assert shapes == {
        'sup': (B, 3, 16, 16),
        'unsup_weak': (mu * B, 3, 16, 16),
        'unsup_strong': (mu * B, 3, 16, 16)
    }
    val = Runner.build_dataloader(cfg.val_dataloader, seed=0)
    assert len(val.dataset) == 500
    val_out = MODELS.build(cfg.data_preprocessor)(next(iter(val)))
    assert val_out['inputs'].shape == (250, 3, 16, 16)
