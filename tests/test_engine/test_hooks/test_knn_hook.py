"""KNNMonitorHook: the weighted k-NN against a hand computation, the hook on
a real short BYOL run (both keys logged, modes restored, nothing of the
model changed), the same numbers from 2 gloo processes as from 1, and bad
options failing at construction."""
import copy
import gc
import glob
import json
import math
import os.path as osp
import random
import re
import time
import uuid
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import (BYOL_CFG, MOCOV2_CFG, free_port, init_gloo,
                      small_selfsup_cfg)
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmpretrain.registry import HOOKS, MODELS

from mmsts.engine.hooks import KNNMonitorHook
from mmsts.engine.hooks.knn_hook import weighted_knn_predict

WORLD_SIZE = 2
K = 3
TEMPERATURE = 0.07
#: 7 of the 8 images of each split: the shards of 2 ranks are padded with a
#: duplicate, which the hook must drop.
MAX_SAMPLES = 7


def knn_loader(data_root, split):
    return dict(
        batch_size=3,
        num_workers=0,
        dataset=dict(
            type='ImageNet',
            data_root=data_root,
            split=split,
            pipeline=[
                dict(type='LoadImageFromFile'),
                dict(type='Resize', scale=32),
                dict(type='PackInputs'),
            ]))


def knn_hook_cfg(data_root, **kwargs):
    cfg = dict(
        type='KNNMonitorHook',
        train_dataloader=knn_loader(data_root, 'train'),
        val_dataloader=knn_loader(data_root, 'val'),
        interval=2,
        k=K,
        temperature=TEMPERATURE,
        max_samples=MAX_SAMPLES)
    cfg.update(kwargs)
    return cfg


def byol_knn_cfg(work_dir, data_root, max_epochs=3):
    """Shrunk BYOL with STS and the k-NN monitor every 2 epochs."""
    cfg = small_selfsup_cfg(
        BYOL_CFG,
        str(work_dir),
        data_root,
        max_epochs=max_epochs,
        hooks=[
            dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.5),
            knn_hook_cfg(data_root),
        ])
    cfg.experiment_name = f'knn-{uuid.uuid4().hex}'
    cfg.log_level = 'INFO'  # the text log, as LoggerHook's lines
    return cfg


# ----------------------------------------------------------------------
# The weighted k-NN
# ----------------------------------------------------------------------
def hand_knn(query, bank, labels, num_classes, k, temperature):
    """The weighted k-NN, one query at a time in plain Python."""
    preds = []
    for q in query.tolist():
        sims = [sum(a * b for a, b in zip(q, x)) for x in bank.tolist()]
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        scores = [0.0] * num_classes
        for i in nearest:
            scores[labels[i]] += math.exp(sims[i] / temperature)
        preds.append(max(range(num_classes), key=lambda c: scores[c]))
    return preds


def unit(*angles_deg):
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([a.cos(), a.sin()], dim=1)


def test_weighted_knn_matches_hand_computation():
    # Bank: class 0 around 0 degrees (3 points), class 1 around 90 (2
    # points, closer to the query at 40 degrees than the class-0 points
    # far away), class 2 at 180.
    bank = unit(0, 10, 60, 80, 95, 180)
    labels = [0, 0, 0, 1, 1, 2]
    query = unit(40, 70, 5, 170, 135)
    for k, temperature in ((1, 0.07), (3, 0.07), (3, 1.0), (4, 0.5),
                           (10, 0.07)):
        expected = hand_knn(query, bank, labels, 3, k, temperature)
        got = weighted_knn_predict(
            query, bank, torch.tensor(labels), 3, k, temperature,
            chunk_size=2)
        assert got.tolist() == expected, (k, temperature)


def test_weights_decide_against_the_majority():
    """One very close neighbour of class 1 outweighs two far ones of class
    0 at a low temperature, not at a high one (unweighted majority)."""
    bank = unit(0, 2, 40)
    labels = torch.tensor([0, 0, 1])
    query = unit(35)  # cos 35 = 0.82, 33 = 0.84; cos 5 = 0.996
    low = weighted_knn_predict(query, bank, labels, 2, k=3, temperature=0.01)
    high = weighted_knn_predict(query, bank, labels, 2, k=3, temperature=100)
    assert hand_knn(query, bank, [0, 0, 1], 2, 3, 0.01) == low.tolist() == [1]
    assert hand_knn(query, bank, [0, 0, 1], 2, 3, 100) == high.tolist() == [0]


# ----------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------
@pytest.mark.parametrize('key, value', [
    ('interval', 0),
    ('interval', 1.5),
    ('k', 0),
    ('k', True),
    ('temperature', 0),
    ('temperature', -0.1),
    ('temperature', float('nan')),
    ('max_samples', 0),
    ('chunk_size', 0),
    ('by_epoch', 'yes'),
    ('evaluate_last', 1),
    ('backbones', {}),
    ('backbones', ['backbone']),
    ('backbones', {'a/b': 'backbone'}),
    ('train_dataloader', None),
    ('val_dataloader', dict(batch_size=2)),
])
def test_bad_options_fail_at_construction(imagenet_root, key, value):
    cfg = knn_hook_cfg(imagenet_root, **{key: value})
    with pytest.raises((ValueError, TypeError)) as err:
        HOOKS.build(cfg)
    assert f'`{key}`' in str(err.value)
    assert repr(value) in str(err.value)


def evaluated_at(hook, num_epochs, iters_per_epoch):
    """Simulate an epoch-based loop; return the (epoch, iter) pairs, 1-based,
    at which the hook evaluates."""
    seen = []
    hook._evaluate_and_log = lambda runner, batch_idx: seen.append(
        (runner.epoch + 1, runner.iter + 1))
    runner = SimpleNamespace(
        train_dataloader=[None] * iters_per_epoch,
        max_epochs=num_epochs,
        max_iters=num_epochs * iters_per_epoch)
    for epoch in range(num_epochs):
        for batch_idx in range(iters_per_epoch):
            runner.epoch = epoch
            runner.iter = epoch * iters_per_epoch + batch_idx
            hook.after_train_iter(runner, batch_idx)
    return seen


@pytest.mark.parametrize('options, expected', [
    (dict(interval=2), [(2, 6), (4, 12), (5, 15)]),
    (dict(interval=2, evaluate_last=False), [(2, 6), (4, 12)]),
    (dict(interval=5), [(5, 15)]),
    (dict(interval=4, by_epoch=False), [(2, 4), (3, 8), (4, 12), (5, 15)]),
    (dict(interval=4, by_epoch=False, evaluate_last=False),
     [(2, 4), (3, 8), (4, 12)]),
])
def test_when_it_evaluates(imagenet_root, options, expected):
    hook = HOOKS.build(knn_hook_cfg(imagenet_root, **options))
    assert evaluated_at(hook, num_epochs=5, iters_per_epoch=3) == expected


def test_by_epoch_needs_an_epoch_based_loop(imagenet_root):
    from mmengine.runner import IterBasedTrainLoop
    hook = HOOKS.build(knn_hook_cfg(imagenet_root))
    runner = SimpleNamespace(
        train_loop=IterBasedTrainLoop.__new__(IterBasedTrainLoop))
    with pytest.raises(ValueError, match='by_epoch=False'):
        hook.before_train(runner)


def selfsup_model(base, tmp_path, imagenet_root):
    cfg = small_selfsup_cfg(base, str(tmp_path), imagenet_root)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(cfg.model)


@pytest.mark.parametrize('base, teacher', [
    (BYOL_CFG, 'target_net.module.0'),
    (MOCOV2_CFG, 'encoder_k.module.0'),
])
def test_finds_teacher_and_student_backbones(tmp_path, imagenet_root, base,
                                             teacher):
    hook = HOOKS.build(knn_hook_cfg(imagenet_root))
    model = selfsup_model(base, tmp_path, imagenet_root)
    found = hook.find_backbones(SimpleNamespace(model=model))
    assert found == dict(teacher=teacher, student='backbone')


def test_finds_fixmatch_backbones(imagenet_root):
    hook = HOOKS.build(knn_hook_cfg(imagenet_root))
    model = MODELS.build(
        dict(
            type='FixMatch',
            backbone=dict(type='WideResNet', depth=10, widen_factor=1),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=3, in_channels=64)))
    found = hook.find_backbones(SimpleNamespace(model=model))
    assert found == dict(
        teacher='teacher.module.backbone', student='student.backbone')


def test_wrong_backbone_name_fails_naming_it(tmp_path, imagenet_root):
    hook = HOOKS.build(
        knn_hook_cfg(
            imagenet_root, backbones=dict(teacher='target_net.module.7')))
    model = selfsup_model(BYOL_CFG, tmp_path, imagenet_root)
    with pytest.raises(ValueError, match=r"backbones.teacher.*"
                       r"'target_net.module.7'"):
        hook.find_backbones(SimpleNamespace(model=model))


def test_model_without_teacher_fails(imagenet_root):
    hook = HOOKS.build(knn_hook_cfg(imagenet_root))
    model = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='ResNet', depth=18),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=2, in_channels=512)))
    with pytest.raises(ValueError, match='found 0 averaged models'):
        hook.find_backbones(SimpleNamespace(model=model))


# ----------------------------------------------------------------------
# evaluate(): the numbers, the modes, the model untouched
# ----------------------------------------------------------------------
def hand_features(backbone, loader_cfg, data_preprocessor):
    """Features and labels of the evenly spaced MAX_SAMPLES images of a
    split, computed here image by image with the model's preprocessing."""
    from mmpretrain.datasets import ImageNet
    from mmengine.dataset import default_collate
    dataset = ImageNet(**{
        k: v
        for k, v in loader_cfg['dataset'].items() if k != 'type'
    })
    feats, labels = [], []
    # Evenly spaced subset, as documented for max_samples.
    n = len(dataset)
    keep = sorted({round(i * (n - 1) / (MAX_SAMPLES - 1))
                   for i in range(MAX_SAMPLES)})
    for i in keep:
        data = data_preprocessor(default_collate([dataset[i]]), False)
        out = backbone(data['inputs'])[-1].mean(dim=(2, 3))
        feats.append(F.normalize(out, dim=1))
        labels.append(int(data['data_samples'][0].gt_label))
    return torch.cat(feats), labels


def test_evaluate_numbers_modes_and_model_untouched(tmp_path, imagenet_root):
    hook = HOOKS.build(knn_hook_cfg(imagenet_root))
    torch.manual_seed(0)
    model = selfsup_model(BYOL_CFG, tmp_path, imagenet_root)
    model.train()
    model.target_net.module[1].eval()  # a module in eval mode stays so
    # Make the teacher differ from the student.
    for module in model.target_net.module[0].modules():  # other weights
        if hasattr(module, 'reset_parameters') and module is not model:
            module.reset_parameters()
    modes = {n: m.training for n, m in model.named_modules()}
    state = copy.deepcopy(model.state_dict())
    rng = (random.getstate(), np.random.get_state()[1].copy(),
           torch.get_rng_state())
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        results = hook.evaluate(SimpleNamespace(model=model, seed=0))
    # The global random states are as they were (iterating a data loader
    # draws from torch's), so training goes on as without the hook.
    assert random.getstate() == rng[0]
    assert np.array_equal(np.random.get_state()[1], rng[1])
    assert torch.equal(torch.get_rng_state(), rng[2])
    assert sorted(results) == ['knn/student/top1', 'knn/teacher/top1']
    assert {n: m.training for n, m in model.named_modules()} == modes
    for key, value in model.state_dict().items():  # BN statistics too
        assert torch.equal(value, state[key]), key

    # The same k-NN computed here, image by image, in eval mode.
    with DefaultScope.overwrite_default_scope('mmpretrain'), \
            torch.no_grad():
        expected = {}
        for label, backbone in (('teacher', model.target_net.module[0]),
                                ('student', model.backbone)):
            backbone.eval()
            bank, bank_labels = hand_features(
                backbone, knn_loader(imagenet_root, 'train'),
                model.data_preprocessor)
            query, query_labels = hand_features(
                backbone, knn_loader(imagenet_root, 'val'),
                model.data_preprocessor)
            # Real unit vectors (not zeros or NaNs from a broken network).
            for feats in (bank, query):
                torch.testing.assert_close(
                    feats.norm(dim=1), torch.ones(MAX_SAMPLES))
            preds = hand_knn(bank=bank.double(), query=query.double(),
                             labels=bank_labels, num_classes=2, k=K,
                             temperature=TEMPERATURE)
            expected[f'knn/{label}/top1'] = 100 * sum(
                p == y for p, y in zip(preds, query_labels)) / MAX_SAMPLES
    assert results == pytest.approx(expected)


# ----------------------------------------------------------------------
# A real short BYOL run, then the same checkpoint in 1 and in 2 processes
# ----------------------------------------------------------------------
KNN_KEYS = ('knn/teacher/top1', 'knn/student/top1')


def train_and_read_logs(cfg):
    """Train; return the run's scalars.json records, text log, message hub
    history of the k-NN keys and the hook."""
    runner = Runner.from_cfg(cfg)
    runner.train()
    hook = next(h for h in runner.hooks if isinstance(h, KNNMonitorHook))
    scalars = glob.glob(osp.join(cfg.work_dir, '*', 'vis_data',
                                 'scalars.json'))
    logs = glob.glob(osp.join(cfg.work_dir, '*', '*.log'))
    assert len(scalars) == 1 and len(logs) == 1
    with open(scalars[0]) as f:
        records = [json.loads(line) for line in f if line.strip()]
    with open(logs[0]) as f:
        log = f.read()
    history = {
        key: runner.message_hub.get_scalar(f'train/{key}').data[0].tolist()
        for key in KNN_KEYS
    }
    return dict(
        work_dir=cfg.work_dir,
        records=records,
        log=log,
        history=history,
        modes=[m.training for m in runner.model.modules()],
        total_time=hook.total_time,
        lines=[
            line for line in log.splitlines() if 'k-NN monitor (' in line
        ])


@pytest.fixture(scope='module')
def byol_run(imagenet_root, tmp_path_factory):
    """3 epochs of 2 iterations, k-NN every 2 epochs and at the end;
    LoggerHook logs every iteration."""
    return train_and_read_logs(
        byol_knn_cfg(tmp_path_factory.mktemp('knn_byol'), imagenet_root))


def test_byol_run_logs_both_keys(byol_run):
    records = byol_run['records']
    # LoggerHook's records, one per iteration; the k-NN keys from the first
    # evaluation (iter 4, end of epoch 2) on, then the last (iter 6).
    assert [r['step'] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all('loss' in r for r in records)
    assert not any(k in r for r in records[:3] for k in KNN_KEYS)
    evaluations = [records[3], records[5]]
    for key in KNN_KEYS:
        assert records[4][key] == records[3][key]  # the latest value
        assert byol_run['history'][key] == [r[key] for r in evaluations]
        for record in evaluations:
            assert 0 <= record[key] <= 100
            # 7 query images: multiples of 100 / 7.
            hits = record[key] * MAX_SAMPLES / 100
            assert hits == pytest.approx(round(hits), abs=1e-6)
    # The text log: one line per evaluation, with the same numbers.
    assert len(byol_run['lines']) == 2
    for line, record, where in zip(byol_run['lines'], evaluations,
                                   ('epoch 2, iter 4', 'epoch 3, iter 6')):
        assert f'after {where}:' in line
        for key in KNN_KEYS:
            assert f'{key}: {record[key]:.2f}' in line
        assert '% of the training time so far' in line
    assert byol_run['total_time'] > 0
    # The model is left in training mode.
    assert all(byol_run['modes'])


def test_by_iter_writes_records_loggerhook_skips(imagenet_root, tmp_path):
    """Every 3 iterations (by_epoch=False) while LoggerHook logs every 2nd
    iteration of an epoch: iteration 3 (1st of epoch 2) is not LoggerHook's,
    so the hook writes its own record there."""
    cfg = byol_knn_cfg(tmp_path, imagenet_root)
    cfg.custom_hooks[1].update(by_epoch=False, interval=3)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=2)
    run = train_and_read_logs(cfg)
    by_step = {}
    for record in run['records']:
        by_step.setdefault(record['step'], []).append(record)
    assert sorted(by_step) == [2, 3, 4, 6]
    (own, ) = by_step[3]
    assert set(own) == {*KNN_KEYS, 'iter', 'step'}
    (logged, ) = by_step[6]
    assert 'loss' in logged
    for key in KNN_KEYS:
        assert run['history'][key] == [own[key], logged[key]]
        assert by_step[4][0][key] == own[key]
    assert [re.search(r'after (.*?):', line).group(1)
            for line in run['lines']] == ['iter 3', 'iter 6']


def evaluate_checkpoint(work_dir, data_root, checkpoint, distributed=False):
    """Build the run's runner, load a checkpoint and evaluate it."""
    cfg = byol_knn_cfg(work_dir, data_root)
    cfg.load_from = checkpoint
    cfg.default_hooks.checkpoint = None
    if distributed:
        cfg.model.neck.norm_cfg = dict(type='BN1d')
        cfg.model.head.predictor.norm_cfg = dict(type='BN1d')
        cfg.launcher = 'pytorch'
        cfg.env_cfg.dist_cfg = dict(backend='gloo')
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False)
    runner = Runner.from_cfg(cfg)
    runner.load_or_resume()
    hook = next(h for h in runner.hooks if isinstance(h, KNNMonitorHook))
    results = hook.evaluate(runner)
    bank, _ = hook.extract(runner)
    out = dict(
        results=results,
        bank=bank,
        world_size=dist.get_world_size() if distributed else 1,
        shard=len(hook.dataloaders['train'].sampler))
    del runner, hook
    gc.collect()
    return out


def dist_worker(rank, port, work_dir, data_root, checkpoint, out_file):
    init_gloo(rank, port, WORLD_SIZE)
    out = evaluate_checkpoint(
        osp.join(work_dir, f'rank{rank}'),
        data_root,
        checkpoint,
        distributed=True)
    torch.save(out, f'{out_file}.{rank}')
    dist.barrier()
    dist.destroy_process_group()


def spawn(fn, *args, timeout=300):
    context = mp.start_processes(
        fn, args=args, nprocs=WORLD_SIZE, join=False, start_method='spawn')
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            pytest.fail(f'{fn.__name__} did not finish in {timeout} s')


def test_same_numbers_in_one_and_two_processes(byol_run, imagenet_root,
                                               tmp_path):
    checkpoint = osp.join(byol_run['work_dir'], 'epoch_3.pth')
    logged = byol_run['records'][-1]
    one = evaluate_checkpoint(
        str(tmp_path / 'one'), imagenet_root, checkpoint)
    # The last evaluation of the run saw the weights of the last checkpoint.
    assert one['results'] == {k: logged[k] for k in KNN_KEYS}

    out_file = str(tmp_path / 'dist.pt')
    spawn(dist_worker, free_port(), str(tmp_path / 'dist'), imagenet_root,
          checkpoint, out_file)
    ranks = [torch.load(f'{out_file}.{r}') for r in range(WORLD_SIZE)]
    for two in ranks:
        assert two['world_size'] == 2
        assert two['shard'] == 4  # 7 images padded to 2 x 4
        assert two['results'] == one['results']
        # Every image once, in data-set order, whatever the rank.
        assert torch.equal(two['bank']['labels'], one['bank']['labels'])
        assert two['bank']['teacher'].shape == (MAX_SAMPLES, 512)
        torch.testing.assert_close(two['bank']['teacher'],
                                   one['bank']['teacher'])
