"""scikit-learn's bundled handwritten digits as an mmpretrain data set."""
from typing import Optional

import numpy as np
from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

#: Images per class in the fixed test split (10 classes -> 500 images).
TEST_PER_CLASS = 50


def digits_split_indices(split: str) -> np.ndarray:
    """Indices of the fixed ``'train'``/``'test'`` split of the digits.

    The split is deterministic and documented: for every class, its last
    :data:`TEST_PER_CLASS` (50) images in scikit-learn's order form the
    test set and the rest (1,297 images in all) the training set. No random
    number is involved, so the split is the same on every machine.

    Args:
        split (str): ``'train'`` or ``'test'``.
    """
    from sklearn.datasets import load_digits
    labels = load_digits().target
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        test[np.flatnonzero(labels == c)[-TEST_PER_CLASS:]] = True
    return np.flatnonzero(test if split == 'test' else ~test)


@DATASETS.register_module()
class Digits(BaseDataset):
    """The 8x8 handwritten digits bundled with scikit-learn (1,797 images,
    10 classes, from the UCI ML repository); no download is needed.

    Images are 8x8 grey levels 0..16, given to the pipeline as ``uint8``
    arrays of shape (8, 8, 3) scaled to 0..255, like CIFAR images in
    mmpretrain, so the usual transforms (``Resize``, ``RandomCrop``, ...)
    apply. The train/test split is fixed, see :func:`digits_split_indices`:
    1,297 training and 500 test images (50 per class).

    Args:
        split (str): ``'train'`` or ``'test'``. Defaults to ``'train'``.
        metainfo (dict, optional): Meta information of the data set.
        **kwargs: Other arguments of :class:`mmpretrain.datasets.BaseDataset`
            (``pipeline``, ``test_mode``, ``indices``, ...).
    """

    METAINFO = {'classes': tuple(str(i) for i in range(10))}
    SPLITS = ('train', 'test')

    def __init__(self,
                 split: str = 'train',
                 metainfo: Optional[dict] = None,
                 **kwargs) -> None:
        if split not in self.SPLITS:
            raise ValueError(
                f'`split` must be one of {self.SPLITS}, but got {split!r}')
        self.split = split
        kwargs.setdefault('data_root', '')
        super().__init__(ann_file='', metainfo=metainfo, **kwargs)

    def load_data_list(self):
        """Load the images and labels of the split."""
        from sklearn.datasets import load_digits
        digits = load_digits()
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
        data_list = []
        for i in digits_split_indices(self.split):
            img = np.repeat(images[i][:, :, None], 3, axis=2)
            data_list.append({'img': img, 'gt_label': int(digits.target[i])})
        return data_list
