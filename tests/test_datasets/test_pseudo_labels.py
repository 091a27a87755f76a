"""Noisy Student's pseudo-labels: filtering and balancing against a
hand-built example, the file round trip, and the data set that serves them
(refusing a file written for another data set)."""
import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmpretrain.datasets.transforms import PackInputs
from mmpretrain.registry import MODELS

from mmsts.datasets import (PseudoLabeledDataset, dataset_fingerprint,
                            load_pseudo_labels, save_pseudo_labels,
                            select_pseudo_labels)

# Six unlabeled images, three classes.
PROBS = np.array([
    [0.90, 0.05, 0.05],  # 0: class 0, confident
    [0.20, 0.25, 0.55],  # 1: class 2
    [0.60, 0.30, 0.10],  # 2: class 0
    [0.28, 0.36, 0.36],  # 3: class 1 (tie 1/2: argmax takes 1), conf 0.36
    [0.34, 0.33, 0.33],  # 4: class 0, conf 0.34
    [0.10, 0.20, 0.70],  # 5: class 2
], dtype=np.float32)


def test_filtering_and_balancing_by_hand():
    # threshold 0.35: image 4 (0.34) is dropped; class 0 has {0 (0.9),
    # 2 (0.6)}, class 1 has {3}, class 2 has {5 (0.7), 1 (0.55)}.
    indices, targets = select_pseudo_labels(PROBS, 0.35)
    assert indices.tolist() == [0, 2, 3, 5, 1]
    np.testing.assert_array_equal(targets, PROBS[[0, 2, 3, 5, 1]])
    # Two per class: class 1's single image is duplicated.
    indices, _ = select_pseudo_labels(PROBS, 0.35, per_class=2)
    assert indices.tolist() == [0, 2, 3, 3, 5, 1]
    # One per class: the most confident of each class.
    indices, targets = select_pseudo_labels(PROBS, 0.35, per_class=1,
                                            hard=True)
    assert indices.tolist() == [0, 3, 5]
    np.testing.assert_array_equal(targets, np.eye(3, dtype=np.float32))
    # Three per class, duplicates cycle most confident first.
    indices, _ = select_pseudo_labels(PROBS, 0.35, per_class=3)
    assert indices.tolist() == [0, 2, 0, 3, 3, 3, 5, 1, 5]
    # Threshold 1: nothing is kept; threshold 0: everything.
    assert select_pseudo_labels(PROBS, 1.0)[0].size == 0
    assert sorted(select_pseudo_labels(PROBS, 0.0)[0].tolist()) == list(
        range(6))


@pytest.mark.parametrize('kwargs,message', [
    (dict(threshold=1.5), r'`threshold` must be a number in \[0, 1\], but '
     r'got 1\.5'),
    (dict(threshold=-0.1), r'threshold.*-0\.1'),
    (dict(threshold=0.3, per_class=0), r'`per_class` must be an integer >= '
     r'1 or None, but got 0'),
])
def test_selection_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_pseudo_labels(PROBS, **kwargs)


class TinySet:
    """An in-memory data set (like mmpretrain's MNIST ones)."""

    def __init__(self, n=6, seed=0):
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, 4, 4), np.uint8)
        self.pipeline = lambda info: info
        self.metainfo = dict(classes=('a', 'b', 'c'))

    def __len__(self):
        return len(self.images)

    def get_data_info(self, idx):
        return dict(img=self.images[idx], gt_label=idx % 3)


def test_file_and_dataset_round_trip(tmp_path):
    unlabeled = TinySet()
    indices, targets = select_pseudo_labels(PROBS, 0.35, per_class=2)
    path = str(tmp_path / 'round1' / 'pseudo_labels.npz')
    save_pseudo_labels(path, indices, targets, dataset_fingerprint(unlabeled),
                       threshold=0.35, teacher='round0/iter_10.pth')
    got_indices, got_targets, header = load_pseudo_labels(path)
    np.testing.assert_array_equal(got_indices, indices)
    np.testing.assert_array_equal(got_targets, targets)
    assert header['meta'] == dict(threshold=0.35,
                                  teacher='round0/iter_10.pth')
    dataset = PseudoLabeledDataset(unlabeled, path)
    assert len(dataset) == 6
    for i, idx in enumerate(indices):
        item = dataset[i]
        np.testing.assert_array_equal(item['img'], unlabeled.images[idx])
        np.testing.assert_array_equal(item['gt_score'], targets[i])
        assert 'gt_label' not in item


def test_soft_targets_train_with_mmpretrain_soft_cross_entropy(tmp_path):
    """The served ``gt_score`` goes through mmpretrain's PackInputs and
    ClsHead into ``CrossEntropyLoss(use_soft=True)``."""
    unlabeled = TinySet()
    indices, targets = select_pseudo_labels(PROBS, 0.0)
    path = str(tmp_path / 'p.npz')
    save_pseudo_labels(path, indices, targets, dataset_fingerprint(unlabeled))
    unlabeled.pipeline = PackInputs()
    batch = pseudo_collate([
        item for item in PseudoLabeledDataset(unlabeled, path)])
    head = MODELS.build(
        dict(type='LinearClsHead', num_classes=3, in_channels=16,
             loss=dict(type='CrossEntropyLoss', use_soft=True)))
    feats = torch.stack(batch['inputs']).float().flatten(1) / 255
    loss = head.loss((feats, ), batch['data_samples'])['loss']
    logits = head((feats, ))
    target = torch.from_numpy(targets)
    expected = -(target * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(loss, expected)


def test_file_of_another_dataset_is_refused(tmp_path):
    path = str(tmp_path / 'p.npz')
    indices, targets = select_pseudo_labels(PROBS, 0.35)
    save_pseudo_labels(path, indices, targets,
                       dataset_fingerprint(TinySet(seed=0)))
    with pytest.raises(ValueError,
                       match=r'p\.npz.*was written for another data set'):
        PseudoLabeledDataset(TinySet(seed=1), path)
    with pytest.raises(ValueError, match=r'nowhere\.npz.*no such file'):
        PseudoLabeledDataset(TinySet(), str(tmp_path / 'nowhere.npz'))
    bad = str(tmp_path / 'bad.npz')
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(ValueError, match='is not a pseudo-label file'):
        PseudoLabeledDataset(TinySet(), bad)
