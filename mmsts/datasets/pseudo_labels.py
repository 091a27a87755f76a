"""Pseudo-labels of Noisy Student training: selection, file and data set.

Noisy Student (Xie et al., CVPR 2020) labels unlabeled images with a
teacher's predictions, drops the images it is not confident about and
balances the classes before a student learns from them. This module holds
the parts that do not depend on the model: :func:`select_pseudo_labels`
(filtering and balancing), the pseudo-label file
(:func:`save_pseudo_labels`, :func:`load_pseudo_labels`, keyed by a
fingerprint of the data set it labels) and :class:`PseudoLabeledDataset`,
which serves the selected images with their (soft) labels as mmpretrain's
``gt_score``, the target of ``CrossEntropyLoss(use_soft=True)``.
"""
import copy
import hashlib
import json
import os
import os.path as osp
from typing import Optional, Tuple

import numpy as np
from mmpretrain.registry import DATASETS

#: Version of the pseudo-label file layout.
PSEUDO_LABEL_VERSION = 1


def check_selection(threshold: float, per_class: Optional[int]) -> None:
    """Raise a ValueError naming the value unless ``threshold`` is in
    [0, 1] and ``per_class`` is None or an integer >= 1."""
    if isinstance(threshold, bool) or not isinstance(
            threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError('`threshold` must be a number in [0, 1], but got '
                         f'{threshold!r}')
    if per_class is not None and (isinstance(per_class, bool)
                                  or not isinstance(per_class, int)
                                  or per_class < 1):
        raise ValueError('`per_class` must be an integer >= 1 or None, but '
                         f'got {per_class!r}')


def select_pseudo_labels(probs: np.ndarray,
                         threshold: float,
                         per_class: Optional[int] = None,
                         hard: bool = False
                         ) -> Tuple[np.ndarray, np.ndarray]:
    """Noisy Student's filtering and balancing of a teacher's predictions.

    An image is kept when its highest probability reaches ``threshold``
    (0.3 in the paper) and is assigned to that class. With ``per_class``,
    a class with more kept images keeps its most confident ``per_class``;
    a class with fewer (but some) has its images duplicated, most confident
    first, up to ``per_class``; a class with none stays empty.

    Args:
        probs (np.ndarray): ``(N, C)`` class probabilities of the unlabeled
            images.
        threshold (float): Confidence threshold in [0, 1].
        per_class (int, optional): Images per class after balancing; None
            keeps every confident image once.
        hard (bool): One-hot targets instead of the probabilities.

    Returns:
        tuple[np.ndarray, np.ndarray]: The selected indices into the
        unlabeled images (class by class, a duplicated image repeated) and
        their ``(len(indices), C)`` float32 targets.

    Raises:
        ValueError: for a threshold outside [0, 1] or ``per_class < 1``.
    """
    check_selection(threshold, per_class)
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 2:
        raise ValueError(f'`probs` must be (N, C), but got {probs.shape}')
    confidence = probs.max(axis=1)
    classes = probs.argmax(axis=1)
    kept = confidence >= threshold
    chosen = []
    for c in range(probs.shape[1]):
        members = np.flatnonzero(kept & (classes == c))
        # Most confident first; ties keep the data set's order.
        members = members[np.argsort(-confidence[members], kind='stable')]
        if per_class is not None and members.size:
            repeats = -(-per_class // members.size)
            members = np.tile(members, repeats)[:per_class]
        chosen.append(members)
    indices = np.concatenate(chosen).astype(np.int64)
    if hard:
        targets = np.eye(probs.shape[1], dtype=np.float32)[classes[indices]]
    else:
        targets = probs[indices]
    return indices, targets


def dataset_fingerprint(dataset) -> str:
    """A digest of what a data set serves, to tell whether a pseudo-label
    file belongs to it: its length and each sample's image path (or, for
    in-memory data sets such as mmpretrain's MNIST ones, the image bytes).

    Args:
        dataset: An MMEngine ``BaseDataset`` (``get_data_info``).
    """
    digest = hashlib.sha256()
    digest.update(str(len(dataset)).encode())
    for idx in range(len(dataset)):
        info = dataset.get_data_info(idx)
        if 'img_path' in info:
            digest.update(str(info['img_path']).encode())
        elif 'img' in info:
            digest.update(np.ascontiguousarray(info['img']).tobytes())
        else:
            raise ValueError(
                f'{type(dataset).__name__} sample {idx} has neither '
                '`img_path` nor `img`: cannot fingerprint it')
    return digest.hexdigest()


def save_pseudo_labels(path: str, indices: np.ndarray, targets: np.ndarray,
                       fingerprint: str, **meta) -> None:
    """Write a pseudo-label file (``.npz``) atomically.

    Args:
        path (str): The file to write.
        indices (np.ndarray): Indices into the labeled data set.
        targets (np.ndarray): ``(len(indices), C)`` targets.
        fingerprint (str): :func:`dataset_fingerprint` of that data set.
        **meta: JSON-serialisable settings recorded with them (threshold,
            teacher checkpoint, ...).
    """
    header = dict(version=PSEUDO_LABEL_VERSION, fingerprint=fingerprint,
                  meta=meta)
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = osp.join(directory, f'.{osp.basename(path)}.{os.getpid()}.tmp')
    with open(tmp, 'wb') as f:
        np.savez(
            f,
            indices=np.asarray(indices, np.int64),
            targets=np.asarray(targets, np.float32),
            header=np.array(json.dumps(header)))
    os.replace(tmp, path)


def load_pseudo_labels(path: str) -> Tuple[np.ndarray, np.ndarray, dict]:
    """Read a pseudo-label file: ``(indices, targets, header)``.

    Raises:
        ValueError: naming the file, if it is missing or not a pseudo-label
            file of this version.
    """
    if not osp.isfile(path):
        raise ValueError(f'`pseudo_label_file` {path!r}: no such file')
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(str(data['header']))
            indices, targets = data['indices'], data['targets']
    except (KeyError, ValueError, OSError) as error:
        raise ValueError(f'`pseudo_label_file` {path!r} is not a pseudo-'
                         f'label file ({error})') from error
    if header.get('version') != PSEUDO_LABEL_VERSION:
        raise ValueError(f'`pseudo_label_file` {path!r} has version '
                         f'{header.get("version")!r}, expected '
                         f'{PSEUDO_LABEL_VERSION}')
    if targets.ndim != 2 or len(targets) != len(indices):
        raise ValueError(f'`pseudo_label_file` {path!r}: {len(indices)} '
                         f'indices but targets of shape {targets.shape}')
    return indices, targets, header


class _SoftTargets:
    """Serves the samples of a data set (a config or an instance) with
    ``gt_score`` targets, through the data set's own pipeline; a member of
    MMEngine's ``ConcatDataset``."""

    def __init__(self, dataset) -> None:
        if isinstance(dataset, dict):
            dataset = DATASETS.build(copy.deepcopy(dataset))
        self.dataset = dataset

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(getattr(self.dataset, 'metainfo', {}))

    def full_init(self) -> None:
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()

    def get_data_info(self, idx: int) -> dict:
        raise NotImplementedError

    def __getitem__(self, idx: int) -> dict:
        return self.dataset.pipeline(self.get_data_info(idx))


@DATASETS.register_module()
class PseudoLabeledDataset(_SoftTargets):
    """The images a teacher pseudo-labeled, with their targets.

    Sample ``i`` is sample ``indices[i]`` of ``dataset`` (a duplicated
    image appears several times) with ``gt_score`` set to its target and
    its own label, if any, removed: a student learns it with mmpretrain's
    ``CrossEntropyLoss(use_soft=True)``.

    Args:
        dataset (dict | BaseDataset): The unlabeled data set that was
            labeled, with the student's (noised) pipeline.
        pseudo_label_file (str): Written by :func:`save_pseudo_labels`
            (``tools/pseudo_label.py``) for that same data set.

    Raises:
        ValueError: if the file is missing, malformed, or was written for
            another data set (its fingerprint differs), naming the file.
    """

    def __init__(self, dataset, pseudo_label_file: str) -> None:
        super().__init__(dataset)
        dataset = self.dataset
        self.pseudo_label_file = pseudo_label_file
        indices, targets, header = load_pseudo_labels(pseudo_label_file)
        fingerprint = dataset_fingerprint(dataset)
        if header['fingerprint'] != fingerprint:
            raise ValueError(
                f'`pseudo_label_file` {pseudo_label_file!r} was written for '
                f'another data set than {type(dataset).__name__} of '
                f'{len(dataset)} samples (fingerprint '
                f'{header["fingerprint"][:12]}... vs {fingerprint[:12]}...)')
        if len(indices) and not 0 <= indices.min() <= indices.max() < len(
                dataset):
            raise ValueError(
                f'`pseudo_label_file` {pseudo_label_file!r} indexes samples '
                f'outside [0, {len(dataset)})')
        self.indices, self.targets = indices, targets
        self.meta = header.get('meta', {})

    def __len__(self) -> int:
        return len(self.indices)

    def get_data_info(self, idx: int) -> dict:
        info = self.dataset.get_data_info(int(self.indices[idx]))
        info.pop('gt_label', None)
        info['gt_score'] = self.targets[idx].copy()
        return info


@DATASETS.register_module()
class OneHotLabels(_SoftTargets):
    """A labeled data set served with one-hot ``gt_score`` targets, to be
    concatenated with a :class:`PseudoLabeledDataset` (mmpretrain's head
    takes soft targets only when every sample of a batch has them).

    Args:
        dataset (dict | BaseDataset): A single-label data set.
        num_classes (int): The number of classes.
    """

    def __init__(self, dataset, num_classes: int) -> None:
        super().__init__(dataset)
        if isinstance(num_classes, bool) or not isinstance(
                num_classes, int) or num_classes < 1:
            raise ValueError('`num_classes` must be an integer >= 1, but '
                             f'got {num_classes!r}')
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.dataset)

    def get_data_info(self, idx: int) -> dict:
        info = self.dataset.get_data_info(idx)
        label = int(np.asarray(info.pop('gt_label')).reshape(-1)[0])
        info['gt_score'] = np.eye(self.num_classes, dtype=np.float32)[label]
        return info
