"""MultiBranch and the FixMatch weak/strong pipelines of the semi-supervised
base configs, on real uint8 images."""
import os.path as osp

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmpretrain.registry import TRANSFORMS
from mmpretrain.structures import DataSample
from sklearn.datasets import load_digits, load_sample_image

from mmsts.datasets import MultiBranch
from conftest import REPO_ROOT

CONFIGS = osp.join(
    REPO_ROOT, 'configs', '_base_',
    'datasets')
BRANCHES = ['sup', 'unsup_weak', 'unsup_strong']
FIXMATCH_OPS = {
    'AutoContrast', 'Brightness', 'ColorTransform', 'Contrast', 'Equalize',
    'Compose', 'Posterize', 'Rotate', 'Sharpness', 'Shear', 'Solarize',
    'Translate'
}


def load_cfg(name):
    return Config.fromfile(osp.join(CONFIGS, name))


def photo(size=32):
    """A real photograph (bundled with scikit-learn), as a CIFAR-sized
    uint8 HWC image."""
    return mmcv.imresize(load_sample_image('china.jpg'), (size, size))


def digit(index=0):
    """A real 8x8 digit, as the Digits data set gives it."""
    image = np.round(load_digits().images[index] * (255.0 / 16.0))
    return np.repeat(image.astype(np.uint8)[:, :, None], 3, axis=2)


def build(pipeline):
    return [TRANSFORMS.build(t) for t in pipeline]


def run(pipeline, img):
    results = dict(
        img=img.copy(),
        img_shape=img.shape[:2],
        ori_shape=img.shape[:2],
        gt_label=3,
        sample_idx=7)
    for t in pipeline:
        results = t(results)
    return results


def crops_of(img, pad, size, flips=(False, True)):
    """Every crop of ``size`` of ``img`` padded by ``pad`` with reflection,
    flipped or not."""
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
    out = []
    for flip in flips:
        source = padded[:, ::-1] if flip else padded
        for y in range(2 * pad + 1):
            for x in range(2 * pad + 1):
                out.append(source[y:y + size, x:x + size])
    return np.stack(out)


def is_one_of(img, candidates):
    return bool(np.any(np.all(candidates == img[None], axis=(1, 2, 3))))


def test_multi_branch_fills_only_its_branches():
    img = photo()
    transform = MultiBranch(
        branch_field=BRANCHES,
        unsup_weak=[dict(type='PackInputs')],
        unsup_strong=[
            dict(type='Cutout', shape=8, pad_val=0, prob=1.0),
            dict(type='PackInputs')
        ])
    results = dict(img=img, gt_label=3, sample_idx=7)
    out = transform(results)

    assert set(out) == {'inputs', 'data_samples'}
    assert list(out['inputs']) == BRANCHES
    assert list(out['data_samples']) == BRANCHES
    assert out['inputs']['sup'] is None and out['data_samples']['sup'] is None
    weak = out['inputs']['unsup_weak']
    strong = out['inputs']['unsup_strong']
    assert weak.dtype == torch.uint8 and weak.shape == (3, 32, 32)
    # The weak branch is the image itself; the strong one is the same image
    # with a square cut out: each branch worked on its own copy.
    assert torch.equal(weak, torch.from_numpy(img).permute(2, 0, 1))
    changed = (strong != weak).any(0)
    assert 0 < changed.sum() <= 64
    assert np.array_equal(results['img'], img)
    for branch in ('unsup_weak', 'unsup_strong'):
        sample = out['data_samples'][branch]
        assert isinstance(sample, DataSample)
        assert sample.sample_idx == 7 and sample.gt_label.item() == 3


def test_multi_branch_drops_sample_when_a_branch_does():
    transform = MultiBranch(
        branch_field=BRANCHES,
        sup=[dict(type='PackInputs')],
        unsup_weak=[lambda results: None])
    assert transform(dict(img=photo(), gt_label=1)) is None


@pytest.mark.parametrize('kwargs, error, words', [
    (dict(branch_field='sup', sup=[]), TypeError, 'branch_field'),
    (dict(branch_field=['sup', 'sup'], sup=[]), ValueError, 'repeated'),
    (dict(branch_field=['sup'], unsup=[]), ValueError, "['unsup']"),
    (dict(branch_field=['sup']), ValueError, 'at least one'),
    (dict(branch_field=['sup'],
          sup=dict(type='PackInputs')), TypeError, "'sup'"),
])
def test_multi_branch_bad_config(kwargs, error, words):
    with pytest.raises(error, match=None) as info:
        MultiBranch(**kwargs)
    assert words in str(info.value)


def test_multi_branch_needs_packing():
    transform = MultiBranch(
        branch_field=['sup'], sup=[dict(type='RandomFlip', prob=0.5)])
    with pytest.raises(KeyError, match='PackInputs'):
        transform(dict(img=photo()))


def test_multi_branch_from_registry_and_repr():
    transform = TRANSFORMS.build(
        dict(
            type='MultiBranch',
            branch_field=BRANCHES,
            sup=[dict(type='PackInputs')]))
    assert isinstance(transform, MultiBranch)
    assert 'sup=' in repr(transform) and 'PackInputs' in repr(transform)


def test_cifar_weak_is_flip_and_reflect_pad_crop():
    cfg = load_cfg('semi_cifar10.py')
    weak = build(cfg.weak_pipeline)
    img = photo()
    candidates = crops_of(img, pad=4, size=32)
    np.random.seed(0)
    flipped = 0
    for _ in range(30):
        out = run(weak, img)['inputs'].permute(1, 2, 0).numpy()
        assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
        assert is_one_of(out, candidates)
        flipped += not is_one_of(out, candidates[:81])
    assert 0 < flipped < 30  # the flip is random


def test_cifar_strong_differs_from_weak():
    cfg = load_cfg('semi_cifar10.py')
    strong = build(cfg.strong_pipeline)
    img = photo()
    candidates = crops_of(img, pad=4, size=32)
    np.random.seed(0)
    outputs = [run(strong, img)['inputs'] for _ in range(20)]
    for out in outputs:
        assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    # RandAugment and Cutout change nearly every strong view: a view equal
    # to a weak one needs Identity twice and an empty cutout.
    same = [
        is_one_of(out.permute(1, 2, 0).numpy(), candidates) for out in outputs
    ]
    assert sum(same) <= 1


def test_unlabeled_pipeline_views_of_one_image():
    cfg = load_cfg('semi_cifar10.py')
    transform = TRANSFORMS.build(cfg.unlabeled_pipeline[0])
    np.random.seed(1)
    out = transform(dict(img=photo(), gt_label=5, sample_idx=11))
    assert out['inputs']['sup'] is None
    weak, strong = out['inputs']['unsup_weak'], out['inputs']['unsup_strong']
    assert weak.shape == strong.shape == (3, 32, 32)
    assert not torch.equal(weak, strong)
    samples = out['data_samples']
    assert samples['unsup_weak'].sample_idx == 11
    assert samples['unsup_strong'].sample_idx == 11


def test_randaugment_is_fixmatch():
    """The config's RandAugment draws 2 of FixMatch's 14 ops (with
    replacement) with FixMatch's magnitude ranges."""
    cfg = load_cfg('semi_cifar10.py')
    randaug = [t for t in cfg.strong_pipeline if t.type == 'RandAugment'][0]
    transform = TRANSFORMS.build(randaug)
    assert transform.num_policies == 2
    names = [p['type'] for p in transform.policies]
    assert len(names) == 14 and set(names) == FIXMATCH_OPS
    identity = transform.transforms[names.index('Compose')]
    img = photo()
    assert np.array_equal(identity(dict(img=img.copy()))['img'], img)

    def draws(op, n=2000):
        values = []
        for _ in range(n):
            value = op.random_magnitude()
            if op.random_negative_prob > 0:
                value = op.random_negative(value)
            values.append(value)
        return np.array(values)

    np.random.seed(0)
    ops = {}
    for policy, op in zip(transform.policies, transform.transforms):
        ops.setdefault(policy['type'], op)
        assert getattr(op, 'prob', 1.0) == 1.0
    for name in ('Brightness', 'ColorTransform', 'Contrast', 'Sharpness'):
        factor = 1 + draws(ops[name])  # the factor the op applies
        assert factor.min() >= 0.05 and factor.max() <= 0.95
        assert factor.min() < 0.1 and factor.max() > 0.9
    for name, high in (('Rotate', 30), ('Shear', 0.3), ('Translate', 0.3)):
        value = draws(ops[name])
        assert value.min() >= -high and value.max() <= high
        assert value.min() < -0.9 * high and value.max() > 0.9 * high
    bits = np.ceil(draws(ops['Posterize']))
    assert set(bits.tolist()) == {4, 5, 6, 7}
    threshold = draws(ops['Solarize'])
    assert threshold.min() >= 0 and threshold.max() <= 256
    assert threshold.max() - threshold.min() > 240


@pytest.mark.parametrize('name, size, pad_val', [
    ('semi_cifar10.py', 32, (125, 123, 114)),
    ('semi_digits.py', 16, (78, 78, 78)),
])
def test_cutout_size_is_random_up_to_half(name, size, pad_val):
    cfg = load_cfg(name)
    cutout = TRANSFORMS.build(
        [t for t in cfg.strong_pipeline if t.type == 'Cutout'][0])
    np.random.seed(0)
    img = np.full((size, size, 3), 255, np.uint8)
    areas = []
    for _ in range(200):
        out = cutout(dict(img=img.copy()))['img']
        cut = np.all(out == np.array(pad_val, np.uint8), axis=2)
        areas.append(int(cut.sum()))
    half = size // 2
    assert max(areas) <= half * half
    assert len(set(areas)) > half // 2  # many different sizes
    assert min(areas) < size and max(areas) > (half - 3)**2


def test_all_configs_share_the_fixmatch_policies():
    policies = [
        load_cfg(name).fixmatch_randaug_policies
        for name in ('semi_cifar10.py', 'semi_cifar100.py', 'semi_digits.py')
    ]
    assert policies[0] == policies[1] == policies[2]


def test_digits_weak_has_no_flip_and_strong_differs():
    cfg = load_cfg('semi_digits.py')
    weak, strong = build(cfg.weak_pipeline), build(cfg.strong_pipeline)
    img = digit(0)
    upsampled = run(build(cfg.test_pipeline), img)['inputs']
    upsampled = upsampled.permute(1, 2, 0).numpy()
    assert upsampled.shape == (16, 16, 3)
    unflipped = crops_of(upsampled, pad=2, size=16, flips=(False, ))
    np.random.seed(0)
    for _ in range(30):
        out = run(weak, img)['inputs']
        assert out.dtype == torch.uint8 and out.shape == (3, 16, 16)
        assert is_one_of(out.permute(1, 2, 0).numpy(), unflipped)
    same = [
        is_one_of(
            run(strong, img)['inputs'].permute(1, 2, 0).numpy(), unflipped)
        for _ in range(20)
    ]
    assert sum(same) <= 2
