"""Labeled splits for semi-supervised learning."""
import json
import logging
import os
import os.path as osp
from typing import List, Optional, Sequence, Union

import numpy as np
from mmengine.dist import is_main_process
from mmengine.logging import print_log
from mmengine.utils import mkdir_or_exist
from mmpretrain.registry import DATASETS

#: Version of the JSON layout written by :class:`LabeledSubset`.
INDEX_FILE_VERSION = 1


def _describe(dataset) -> str:
    return type(dataset).__name__


def _as_index(value, path: str, key: str) -> int:
    """An entry of the ``key`` list of index file ``path`` as an ``int``.

    Only integers are accepted (``int`` or an integral NumPy scalar): a
    float such as ``3.7``, or even ``3.0``, is not silently truncated but
    refused, as are booleans and strings.

    Args:
        value: The entry.
        path (str): The index file, for the message.
        key (str): The list the entry is from, for the message.

    Returns:
        int: The entry.

    Raises:
        ValueError: If the entry is not an integer.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(
            f'`index_file` {path!r} is not a LabeledSubset index file: its '
            f'`{key}` must be integers, but it has {value!r} '
            f'({type(value).__name__}).')
    return int(value)


def dataset_labels(dataset) -> np.ndarray:
    """Single-label ground truth of every sample of a classification data set.

    Uses ``get_cat_ids(idx)`` (MMEngine and mmpretrain data sets) for every
    index when the data set has it, else ``get_gt_labels()``.

    Args:
        dataset: The data set.

    Returns:
        np.ndarray: One ``int64`` label per sample.

    Raises:
        ValueError: If the data set has no labels (e.g. ``with_label=False``)
            or is not single-label.
    """
    name = _describe(dataset)
    if getattr(dataset, 'with_label', True) is False:
        raise ValueError(
            f'LabeledSubset needs a labeled data set, but `dataset` '
            f'({name}) was built with `with_label=False`.')
    try:
        if hasattr(dataset, 'get_cat_ids'):
            labels = [dataset.get_cat_ids(i) for i in range(len(dataset))]
        elif hasattr(dataset, 'get_gt_labels'):
            labels = list(dataset.get_gt_labels())
        else:
            raise ValueError(
                f'LabeledSubset needs a classification data set with '
                f'`get_cat_ids()` or `get_gt_labels()`, but `dataset` is a '
                f'{name}.')
    except KeyError as e:
        raise ValueError(
            f'LabeledSubset needs a labeled data set, but the samples of '
            f'`dataset` ({name}) have no {e} (built with '
            f'`with_label=False`, or an unlabeled annotation file?).') from e
    except TypeError as e:  # e.g. int() of a multi-label list
        raise ValueError(
            f'LabeledSubset needs single-label samples, but the labels of '
            f'`dataset` ({name}) could not be read as one class each: '
            f'{e}') from e
    if len(labels) == 0:
        raise ValueError(f'`dataset` ({name}) is empty.')
    labels = [np.asarray(label).reshape(-1) for label in labels]
    sizes = sorted({label.size for label in labels})
    if sizes != [1]:
        raise ValueError(
            f'LabeledSubset needs single-label samples, but `dataset` '
            f'({name}) has samples with {sizes} labels.')
    labels = np.concatenate(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f'The labels of `dataset` ({name}) must be integers,'
                         f' got dtype {labels.dtype}.')
    return labels.astype(np.int64)


def balanced_label_indices(
        labels: np.ndarray,
        num_per_class: int,
        num_classes: int,
        seed: int,
        class_names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Choose ``num_per_class`` samples of every class at random.

    The choice is a pure function of its arguments: for each class in order,
    ``num_per_class`` of its indices are drawn without replacement by one
    ``numpy.random.default_rng(seed)`` generator.

    Args:
        labels (np.ndarray): The label of every sample.
        num_per_class (int): Samples to keep per class.
        num_classes (int): Number of classes; labels are ``0..num_classes-1``.
        seed (int): Seed of the choice.
        class_names (Sequence[str], optional): Class names for the messages.

    Returns:
        np.ndarray: The chosen indices, sorted.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        if len(members) < num_per_class:
            name = f'{class_names[c]!r} ' if class_names else ''
            raise ValueError(
                f'`num_per_class`={num_per_class} is more than class '
                f'{name}(label {c}) has: it has {len(members)} samples.')
        chosen.append(rng.choice(members, num_per_class, replace=False))
    return np.sort(np.concatenate(chosen))


@DATASETS.register_module()
class LabeledSubset:
    """The labeled part of a semi-supervised split: ``num_per_class`` samples
    of every class of a classification data set, chosen at random by
    ``seed``.

    It works with any mmpretrain single-label classification data set
    (``CIFAR10``, ``CIFAR100``, ``ImageNet``, ``CustomDataset``, ...): the
    labels come from ``get_cat_ids()`` (or ``get_gt_labels()``). The wrapped
    data set keeps its own ``pipeline``; items are those of the wrapped data
    set, so ``sample_idx`` in their meta information is the index in the full
    data set.

    To reproduce a split exactly, give ``index_file``: if the file does not
    exist, the chosen indices are written to it (JSON, by the main process);
    if it exists, the indices are read from it instead of being drawn, and
    checked against the data set (size, labels, ``num_per_class``). A file
    made for another data set or split raises a ``ValueError``.

    Args:
        dataset (dict | Dataset): The full labeled data set or its config.
        num_per_class (int): Labeled samples per class (e.g. 4 for FixMatch's
            40-label CIFAR-10 split).
        seed (int): Seed of the choice, >= 0. Defaults to 0.
        index_file (str, optional): JSON file to save the chosen indices to,
            or to load them from if it exists. Defaults to None.
        lazy_init (bool): Whether to defer loading the data set and choosing
            the indices to :meth:`full_init`. Defaults to False.

    Examples:
        >>> labeled = dict(
        ...     type='LabeledSubset',
        ...     dataset=dict(type='CIFAR10', data_root='data/cifar10',
        ...                  split='train', pipeline=[...]),
        ...     num_per_class=4, seed=0,
        ...     index_file='data/cifar10/labeled_4x10_seed0.json')
    """

    def __init__(self,
                 dataset: Union[dict, object],
                 num_per_class: int,
                 seed: int = 0,
                 index_file: Optional[str] = None,
                 lazy_init: bool = False) -> None:
        if (isinstance(num_per_class, bool)
                or not isinstance(num_per_class,
                                  (int, np.integer)) or num_per_class < 1):
            raise ValueError('`num_per_class` must be an integer >= 1, but '
                             f'got {num_per_class!r}.')
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f'`seed` must be an integer, but got {seed!r}.')
        if seed < 0:
            raise ValueError(f'`seed` must be >= 0, but got {seed!r}.')
        if index_file is not None and not isinstance(index_file, str):
            raise TypeError('`index_file` must be a path (str) or None, but '
                            f'got {index_file!r}.')
        if isinstance(dataset, dict):
            self.dataset = DATASETS.build(dataset)
        else:
            self.dataset = dataset
        self.num_per_class = int(num_per_class)
        self.seed = int(seed)
        self.index_file = index_file
        self.indices: List[int] = []
        self._gt_labels = np.zeros(0, dtype=np.int64)
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict:
        """dict: The meta information of the wrapped data set."""
        return self.dataset.metainfo

    def full_init(self) -> None:
        """Load the wrapped data set and choose (or load) the indices."""
        if self._fully_initialized:
            return
        if hasattr(self.dataset, 'full_init'):
            self.dataset.full_init()
        labels = dataset_labels(self.dataset)
        classes = self.metainfo.get('classes')
        num_classes = len(classes) if classes else int(labels.max()) + 1
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f'The labels of `dataset` ({_describe(self.dataset)}) must be'
                f' in [0, {num_classes}), got [{labels.min()}, '
                f'{labels.max()}].')
        self._check_index_file_path()
        if self.index_file is not None and osp.isfile(self.index_file):
            self.indices = self._load_index_file(labels, num_classes)
            print_log(
                f'LabeledSubset: loaded {len(self.indices)} labeled indices '
                f'from {self.index_file}.',
                logger='current')
        else:
            self.indices = balanced_label_indices(labels, self.num_per_class,
                                                  num_classes, self.seed,
                                                  classes).tolist()
            if self.index_file is not None and is_main_process():
                self._save_index_file(labels, num_classes)
        self._gt_labels = labels[self.indices]
        self._fully_initialized = True

    def _check_index_file_path(self) -> None:
        """Refuse an ``index_file`` that names a directory, before a split
        is drawn or anything is written."""
        path = self.index_file
        if path is None:
            return
        if osp.isdir(path) or path.endswith(('/', os.sep)):
            raise ValueError(
                f'`index_file`={path!r} is a directory, but it must be the '
                'path of a JSON file, e.g. '
                f'{osp.join(path, "labeled_split.json")!r}.')

    def _save_index_file(self, labels: np.ndarray, num_classes: int) -> None:
        content = dict(
            version=INDEX_FILE_VERSION,
            dataset=_describe(self.dataset),
            dataset_size=len(labels),
            num_classes=num_classes,
            num_per_class=self.num_per_class,
            seed=self.seed,
            indices=self.indices,
            labels=labels[self.indices].tolist())
        folder = osp.dirname(osp.abspath(self.index_file))
        mkdir_or_exist(folder)
        # Write then rename, so that no process reads a partial file.
        tmp = f'{self.index_file}.tmp{os.getpid()}'
        try:
            with open(tmp, 'w') as f:
                json.dump(content, f)
            os.replace(tmp, self.index_file)
        except BaseException:
            if osp.lexists(tmp):  # leave nothing behind
                os.remove(tmp)
            raise
        print_log(
            f'LabeledSubset: saved {len(self.indices)} labeled indices to '
            f'{self.index_file}.',
            logger='current')

    def _load_index_file(self, labels: np.ndarray,
                         num_classes: int) -> List[int]:
        path = self.index_file

        def stale(reason: str) -> ValueError:
            return ValueError(
                f'`index_file` {path!r} does not match this data set: '
                f'{reason}. Delete it to draw a new split, or point '
                '`index_file` to the file made for this data set.')

        try:
            with open(path) as f:
                content = json.load(f)
            raw_indices, raw_labels = content['indices'], content['labels']
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f'`index_file` {path!r} is not a LabeledSubset '
                             f'index file: {e!r}') from e
        for key, raw in (('indices', raw_indices), ('labels', raw_labels)):
            if not isinstance(raw, (list, tuple)):
                raise ValueError(
                    f'`index_file` {path!r} is not a LabeledSubset index '
                    f'file: its `{key}` must be a list, but it is {raw!r}.')
        indices = [_as_index(i, path, 'indices') for i in raw_indices]
        saved_labels = [_as_index(i, path, 'labels') for i in raw_labels]
        size = content.get('dataset_size', len(labels))
        if size != len(labels):
            raise stale(f'it was made for {size} samples, the data set has '
                        f'{len(labels)}')
        if len(saved_labels) != len(indices):
            raise stale('it has a different number of indices and labels')
        if len(set(indices)) != len(indices):
            raise stale('it has repeated indices')
        if indices and (min(indices) < 0 or max(indices) >= len(labels)):
            raise stale(f'it has indices outside [0, {len(labels)})')
        mismatch = np.flatnonzero(labels[indices] != np.array(saved_labels))
        if len(mismatch):
            i = indices[mismatch[0]]
            raise stale(f'{len(mismatch)} saved labels differ, e.g. sample '
                        f'{i} has label {labels[i]}, the file says '
                        f'{saved_labels[mismatch[0]]}')
        counts = np.bincount(labels[indices], minlength=num_classes)
        if np.any(counts != self.num_per_class):
            raise stale(f'it has {counts.min()}..{counts.max()} samples per '
                        f'class, but `num_per_class`={self.num_per_class}')
        if content.get('seed', self.seed) != self.seed:
            print_log(
                f'LabeledSubset: `index_file` {path!r} was drawn with seed '
                f"{content['seed']}, not `seed`={self.seed}; using the file.",
                logger='current',
                level=logging.WARNING)
        return sorted(indices)

    def _check_init(self) -> None:
        if not self._fully_initialized:
            self.full_init()

    @property
    def pipeline(self):
        """The wrapped data set's pipeline (for wrappers that serve
        modified annotations, e.g. :class:`OneHotLabels`)."""
        return self.dataset.pipeline

    def get_data_info(self, idx: int) -> dict:
        """The annotation of the ``idx``-th labeled sample.

        Args:
            idx (int): Index in the subset.
        """
        self._check_init()
        return self.dataset.get_data_info(self.indices[idx])

    def get_cat_ids(self, idx: int) -> List[int]:
        """The category of the ``idx``-th labeled sample.

        Args:
            idx (int): Index in the subset.
        """
        self._check_init()
        return self.dataset.get_cat_ids(self.indices[idx])

    def get_gt_labels(self) -> np.ndarray:
        """np.ndarray: The labels of the labeled samples."""
        self._check_init()
        return self._gt_labels.copy()

    def __getitem__(self, idx: int):
        self._check_init()
        return self.dataset[self.indices[idx]]

    def __len__(self) -> int:
        self._check_init()
        return len(self.indices)

    def __repr__(self) -> str:
        return (f'{self.__class__.__name__}(num_per_class='
                f'{self.num_per_class}, seed={self.seed}, index_file='
                f'{self.index_file!r}, num_samples='
                f'{len(self) if self._fully_initialized else "not loaded"},'
                f'\n  dataset={self.dataset!r})')
