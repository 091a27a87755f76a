"""MultiSourceSampler and MultiSourceBatchSampler: batch composition,
determinism, per-rank shards, resume, the batch-size check and bad input."""
import itertools
import os.path as osp

import pytest
import torch
from conftest import REPO_ROOT, make_cifar_pickles
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.runner import Runner
from mmpretrain.registry import DATA_SAMPLERS, MODELS
from torch.utils.data import ConcatDataset, DataLoader

import mmsts.datasets.samplers.multi_source_sampler as module
from mmsts.datasets import MultiSourceBatchSampler, MultiSourceSampler

LABELED, UNLABELED = 10, 37  # source sizes
CONFIGS = osp.join(REPO_ROOT, 'configs', '_base_', 'datasets')


def concat(*sizes):
    """A ConcatDataset whose items are their own (global) indices."""
    starts = itertools.accumulate((0, ) + sizes)
    return ConcatDataset(
        [list(range(start, start + n)) for start, n in zip(starts, sizes)])


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def split(indices, boundary=LABELED):
    """Indices of the labeled (first) and unlabeled (second) source."""
    labeled = [i for i in indices if i < boundary]
    unlabeled = [i - boundary for i in indices if i >= boundary]
    return labeled, unlabeled


@pytest.fixture
def ranks(monkeypatch):
    """Build a sampler as rank ``rank`` of ``world_size`` would."""

    def build(rank, world_size, **kwargs):
        monkeypatch.setattr(module, 'get_dist_info', lambda:
                            (rank, world_size))
        return MultiSourceSampler(**kwargs)

    return build


def test_every_batch_has_b_labeled_and_mu_b_unlabeled():
    B, mu = 3, 4
    dataset = concat(LABELED, UNLABELED)
    sampler = MultiSourceSampler(
        dataset, batch_size=(1 + mu) * B, source_ratio=[1, mu], seed=0)
    loader = DataLoader(
        dataset, batch_size=(1 + mu) * B, sampler=sampler, collate_fn=list)
    for batch in itertools.islice(loader, 20):
        assert len(batch) == (1 + mu) * B
        # The first B come from the labeled source, the rest do not.
        assert all(i < LABELED for i in batch[:B])
        assert all(i >= LABELED for i in batch[B:])


def test_each_pass_is_a_permutation_of_the_source():
    sampler = MultiSourceSampler(
        concat(LABELED, UNLABELED), batch_size=5, source_ratio=[1, 4], seed=3)
    labeled, unlabeled = split(take(sampler, 5 * 40))
    passes = [labeled[k:k + LABELED] for k in range(0, 40, LABELED)]
    for p in passes:
        assert sorted(p) == list(range(LABELED))
    assert len({tuple(p) for p in passes}) == len(passes)  # reshuffled
    assert sorted(unlabeled[:UNLABELED]) == list(range(UNLABELED))
    assert sorted(unlabeled[UNLABELED:2 * UNLABELED]) == list(range(UNLABELED))


def test_no_shuffle_reads_sources_in_order():
    sampler = MultiSourceSampler(
        concat(LABELED, UNLABELED),
        batch_size=4,
        source_ratio=[1, 3],
        shuffle=False,
        seed=0)
    labeled, unlabeled = split(take(sampler, 4 * 20))
    assert labeled == [i % LABELED for i in range(20)]
    assert unlabeled == [i % UNLABELED for i in range(60)]


def test_same_seed_same_stream_other_seed_other_stream():
    dataset = concat(LABELED, UNLABELED)

    def stream(seed):
        return take(
            MultiSourceSampler(
                dataset, batch_size=8, source_ratio=[1, 7], seed=seed), 400)

    assert stream(0) == stream(0)
    assert stream(0) != stream(1)


def test_every_iter_continues_the_same_stream():
    dataset = concat(LABELED, UNLABELED)
    kwargs = dict(batch_size=8, source_ratio=[1, 7], seed=2)
    sampler = MultiSourceSampler(dataset, **kwargs)
    parts = take(sampler, 13) + take(sampler, 27)
    assert parts == take(MultiSourceSampler(dataset, **kwargs), 40)


def test_seed_is_synchronised_when_not_given(monkeypatch):
    monkeypatch.setattr(module, 'sync_random_seed', lambda: 1234)
    dataset = concat(LABELED, UNLABELED)
    sampler = MultiSourceSampler(dataset, batch_size=8, source_ratio=[1, 7])
    assert sampler.seed == 1234
    reference = MultiSourceSampler(
        dataset, batch_size=8, source_ratio=[1, 7], seed=1234)
    assert take(sampler, 200) == take(reference, 200)


@pytest.mark.parametrize('world_size', [2, 3])
def test_ranks_draw_disjoint_shards_of_each_source(ranks, world_size):
    dataset = concat(LABELED, UNLABELED)
    B, mu = 2, 3
    streams = [
        split(
            take(
                ranks(
                    rank,
                    world_size,
                    dataset=dataset,
                    batch_size=(1 + mu) * B,
                    source_ratio=[1, mu],
                    seed=5), (1 + mu) * B * 30)) for rank in range(world_size)
    ]
    for source, size in ((0, LABELED), (1, UNLABELED)):
        # Over the first pass, each rank gets its own part of the source,
        # and together they cover it.
        share = size // world_size
        parts = [set(s[source][:share]) for s in streams]
        for a, b in itertools.combinations(parts, 2):
            assert not a & b
        assert len(set().union(*parts)) == share * world_size
    # Every rank still sees all of the labeled source over several passes.
    for labeled, _ in streams:
        assert set(labeled) == set(range(LABELED))


def test_two_ranks_interleave_one_global_stream(ranks):
    dataset = concat(LABELED, UNLABELED)
    kwargs = dict(dataset=dataset, batch_size=4, source_ratio=[1, 3], seed=9)
    single = split(take(ranks(0, 1, **kwargs), 4 * 50))
    rank0 = split(take(ranks(0, 2, **kwargs), 4 * 25))
    rank1 = split(take(ranks(1, 2, **kwargs), 4 * 25))
    for source in (0, 1):
        assert rank0[source] == single[source][0::2]
        assert rank1[source] == single[source][1::2]


def test_more_ranks_than_samples(ranks):
    dataset = concat(3, 50)
    sampler = ranks(
        3, 4, dataset=dataset, batch_size=2, source_ratio=[1, 1], seed=0)
    labeled, unlabeled = split(take(sampler, 2 * 12), boundary=3)
    assert len(labeled) == 12 and set(labeled) <= {0, 1, 2}
    assert len(unlabeled) == 12


def test_resume_continues_the_stream():
    """Resuming at iteration k, IterBasedTrainLoop skips k batches of a new
    sampler: the batches that follow are those of the uninterrupted run."""
    dataset = concat(LABELED, UNLABELED)
    kwargs = dict(batch_size=8, source_ratio=[1, 3], seed=7)
    loader = DataLoader(
        dataset,
        batch_size=8,
        collate_fn=list,
        sampler=MultiSourceSampler(dataset, **kwargs))
    uninterrupted = list(itertools.islice(loader, 25))

    resumed = iter(
        DataLoader(
            dataset,
            batch_size=8,
            collate_fn=list,
            sampler=MultiSourceSampler(dataset, **kwargs)))
    for _ in range(17):  # what the loop does when resuming at iteration 17
        next(resumed)
    assert [next(resumed) for _ in range(8)] == uninterrupted[17:]


def test_built_from_the_registry():
    dataset = concat(LABELED, UNLABELED)
    sampler = DATA_SAMPLERS.build(
        dict(type='MultiSourceSampler', batch_size=16, source_ratio=[1, 7]),
        default_args=dict(dataset=dataset, seed=0))
    assert isinstance(sampler, MultiSourceSampler)
    assert sampler.num_per_source == [2, 14]
    assert len(sampler) == LABELED + UNLABELED


@pytest.mark.parametrize('kwargs, words', [
    (dict(batch_size=8, source_ratio=[1, 0]), '`source_ratio`'),
    (dict(batch_size=8, source_ratio=[1, -2]), 'mu >= 1'),
    (dict(batch_size=10, source_ratio=[1, 7]), '`batch_size`=10'),
    (dict(batch_size=10, source_ratio=[1, 7]), '[1, 7]'),
    (dict(batch_size=4, source_ratio=[1, 0.5]), '`batch_size`=4'),
    (dict(batch_size=0, source_ratio=[1, 7]), '`batch_size`'),
    (dict(batch_size=8, source_ratio=[1, 1, 2]), '3 entries'),
    (dict(batch_size=8, source_ratio='1:7'), '`source_ratio`'),
])
def test_bad_batch_split_fails_at_build(kwargs, words):
    with pytest.raises(ValueError) as info:
        MultiSourceSampler(concat(LABELED, UNLABELED), seed=0, **kwargs)
    assert words in str(info.value)


def test_fractional_ratio_that_splits_exactly_is_accepted():
    sampler = MultiSourceSampler(
        concat(LABELED, UNLABELED), batch_size=6, source_ratio=[2, 1], seed=0)
    assert sampler.num_per_source == [4, 2]


def test_needs_a_concat_dataset_with_nonempty_sources():
    with pytest.raises(TypeError, match='ConcatDataset'):
        MultiSourceSampler(list(range(10)), batch_size=2, source_ratio=[1, 1])
    with pytest.raises(ValueError, match='Source 1'):
        MultiSourceSampler(
            ConcatDataset([list(range(4)), []]),
            batch_size=2,
            source_ratio=[1, 1],
            seed=0)


def test_indices_index_the_concatenated_dataset():
    dataset = ConcatDataset([
        [torch.tensor(0)] * LABELED,
        [torch.tensor(1)] * UNLABELED,
    ])
    sampler = MultiSourceSampler(
        dataset, batch_size=4, source_ratio=[1, 3], seed=0)
    for i, index in enumerate(take(sampler, 40)):
        assert dataset[index].item() == (0 if i % 4 == 0 else 1)


class BatchRecorder(BaseModel):
    """Records the data set indices of every training batch it gets."""

    def __init__(self, data_preprocessor):
        super().__init__(data_preprocessor=data_preprocessor)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches = []

    def forward(self, inputs, data_samples=None, mode='loss'):
        self.batches.append({
            branch: [s.sample_idx for s in samples]
            for branch, samples in data_samples.items()
        })
        return dict(loss=self.weight * inputs['sup'].mean())


def tiny_semi_cifar10(tmp_path):
    """The semi_cifar10.py base config on tiny CIFAR pickles, batch 8
    (1 labeled + 7 unlabeled), no workers."""
    root = make_cifar_pickles(str(tmp_path / 'cifar'), 10, per_class=3)
    cfg = Config.fromfile(osp.join(CONFIGS, 'semi_cifar10.py'))
    loader = cfg.train_dataloader
    loader.batch_size = loader.sampler.batch_size = 8
    loader.num_workers, loader.persistent_workers = 0, False
    loader.dataset.datasets[0].num_per_class = 1
    loader.dataset.datasets[0].dataset.data_root = root
    loader.dataset.datasets[1].data_root = root
    return cfg


def train(cfg,
          tmp_path,
          max_iters,
          work_dir,
          seed=0,
          resume_from=None,
          model=None):
    """Train ``model`` (a new BatchRecorder if None) with ``cfg``'s data;
    return the batches it recorded."""
    if model is None:
        model = BatchRecorder(MODELS.build(cfg.data_preprocessor))
    runner = Runner(
        model=model,
        work_dir=str(tmp_path / work_dir),
        train_dataloader=cfg.train_dataloader,
        train_cfg=dict(type='IterBasedTrainLoop', max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
            logger=dict(type='LoggerHook', interval=100)),
        randomness=dict(seed=seed),
        default_scope='mmpretrain',
        load_from=resume_from,
        resume=resume_from is not None,
        log_level='WARNING',
        experiment_name=work_dir)
    runner.train()
    return model.batches


@pytest.mark.parametrize('seed', [0, None])
def test_iter_based_loop_resumes_the_same_batches(tmp_path, no_cifar_md5,
                                                  seed):
    """MMEngine's IterBasedTrainLoop, resumed at iteration 2 of 4, trains on
    the same samples at iterations 3 and 4 as the uninterrupted run, also
    with ``randomness.seed=None``, where the resumed run draws another run
    seed: the base config fixes the sampler's seed."""
    cfg = tiny_semi_cifar10(tmp_path)
    full = train(cfg, tmp_path, 4, 'full', seed)
    resumed = train(cfg, tmp_path, 4, 'resumed', seed,
                    str(tmp_path / 'full' / 'iter_2.pth'))
    assert len(full) == 4 and len(resumed) == 2
    assert resumed == full[2:] and full[2:] != full[:2]
    assert [len(b['sup']) for b in full] == [1] * 4  # B = 8 / (1 + 7)
    assert [len(b['unsup_strong']) for b in full] == [7] * 4


@pytest.mark.parametrize('name', ['semi_cifar10.py', 'semi_digits.py'])
def test_base_config_stream_does_not_follow_a_random_run_seed(name):
    """The run seed a Runner passes to the sampler (drawn anew by a resumed
    run when ``randomness.seed=None``) leaves the base configs' data stream
    unchanged; ``sampler.seed`` changes it."""
    cfg = Config.fromfile(osp.join(CONFIGS, name)).train_dataloader
    cfg.dataset = concat(LABELED, UNLABELED)  # the stream, not the images
    cfg.collate_fn = dict(type=lambda batch: batch)
    cfg.num_workers, cfg.persistent_workers = 0, False

    def stream(run_seed, **sampler):
        loader_cfg = cfg.copy()
        loader_cfg.sampler = dict(cfg.sampler, **sampler)
        loader = Runner.build_dataloader(loader_cfg, seed=run_seed)
        return list(itertools.islice(loader, 30))

    assert stream(123) == stream(98765)
    assert stream(123) != stream(123, seed=1)


# ------------------------------------------ batch size vs the data loader's


def loader_cfg(loader_batch_size, sampler_batch_size, **kwargs):
    """A data loader config as in the semi-supervised base configs."""
    return dict(
        dataset=concat(LABELED, UNLABELED),
        batch_size=loader_batch_size,
        sampler=dict(
            type='MultiSourceSampler',
            batch_size=sampler_batch_size,
            source_ratio=[1, 3]),
        batch_sampler=dict(type='MultiSourceBatchSampler'),
        collate_fn=dict(type=lambda batch: batch),
        **kwargs)


@pytest.mark.parametrize('loader_batch_size', [6, 16])
def test_batch_size_mismatch_fails_when_the_loader_is_built(loader_batch_size):
    """A data loader batch smaller (6) or larger (16) than the sampler's (8)
    used to train on 2 labeled + 4 unlabeled samples, or on doubled
    batches."""
    with pytest.raises(ValueError) as info:
        Runner.build_dataloader(loader_cfg(loader_batch_size, 8), seed=0)
    message = str(info.value)
    assert f'`train_dataloader.batch_size`={loader_batch_size}' in message
    assert '`train_dataloader.sampler.batch_size`=8' in message


@pytest.mark.parametrize('loader_batch_size', [6, 16])
def test_batch_size_mismatch_fails_before_the_first_iteration(
        tmp_path, no_cifar_md5, loader_batch_size):
    """The semi_cifar10.py base config with only one of its two batch sizes
    changed: the run stops with the error before training on anything."""
    cfg = tiny_semi_cifar10(tmp_path)
    cfg.train_dataloader.batch_size = loader_batch_size
    model = BatchRecorder(MODELS.build(cfg.data_preprocessor))
    with pytest.raises(
            ValueError, match='`train_dataloader.sampler.'
            'batch_size`=8') as info:
        train(cfg, tmp_path, 2, 'mismatch', model=model)
    assert f'`train_dataloader.batch_size`={loader_batch_size}' in str(
        info.value)
    assert model.batches == []


@pytest.mark.parametrize('sampler_batch_size', [8, None])
def test_matching_or_missing_sampler_batch_size(sampler_batch_size):
    """The same batch size twice, or only the data loader's: every batch of
    8 has 2 labeled and 6 unlabeled samples."""
    loader = Runner.build_dataloader(loader_cfg(8, sampler_batch_size), seed=0)
    batch_sampler = loader.batch_sampler
    assert isinstance(batch_sampler, MultiSourceBatchSampler)
    assert batch_sampler.sampler.batch_size == batch_sampler.batch_size == 8
    assert batch_sampler.sampler.num_per_source == [2, 6]
    assert len(loader) == -(-(LABELED + UNLABELED) // 8)
    for batch in itertools.islice(loader, 20):
        assert len(batch) == 8
        assert all(i < LABELED for i in batch[:2])
        assert all(i >= LABELED for i in batch[2:])


def test_batch_sampler_continues_the_plain_sampler_stream():
    """Batched or plain, the sampler gives the same indices."""
    dataset = concat(LABELED, UNLABELED)
    kwargs = dict(source_ratio=[1, 3], seed=4)
    plain = DataLoader(
        dataset,
        batch_size=8,
        collate_fn=list,
        sampler=MultiSourceSampler(dataset, batch_size=8, **kwargs))
    batched = DataLoader(
        dataset,
        collate_fn=list,
        batch_sampler=MultiSourceBatchSampler(
            MultiSourceSampler(dataset, **kwargs), batch_size=8))
    assert list(itertools.islice(batched,
                                 30)) == list(itertools.islice(plain, 30))


def test_loader_batch_size_that_does_not_split_is_refused():
    with pytest.raises(ValueError, match=r'`batch_size`=10 cannot be split'):
        Runner.build_dataloader(loader_cfg(10, None), seed=0)


def test_plain_sampler_without_batch_size_fails_at_the_first_batch():
    dataset = concat(LABELED, UNLABELED)
    loader = DataLoader(
        dataset,
        batch_size=8,
        collate_fn=list,
        sampler=MultiSourceSampler(dataset, source_ratio=[1, 3], seed=0))
    with pytest.raises(ValueError, match='MultiSourceBatchSampler'):
        next(iter(loader))


def test_plain_sampler_warns_that_its_batch_size_is_unchecked(monkeypatch):
    messages = []
    monkeypatch.setattr(module, 'print_log',
                        lambda msg, **kwargs: messages.append(msg))
    sampler = MultiSourceSampler(
        concat(LABELED, UNLABELED), batch_size=8, source_ratio=[1, 3], seed=0)
    take(sampler, 20)
    take(sampler, 20)
    assert len(messages) == 1
    assert '`batch_size`=8 cannot be checked' in messages[0]

    messages.clear()
    batch_sampler = MultiSourceBatchSampler(sampler, batch_size=8)
    next(iter(batch_sampler))
    assert messages == []


def test_batch_sampler_needs_a_multi_source_sampler():
    cfg = loader_cfg(8, None)
    cfg['sampler'] = dict(type='DefaultSampler', shuffle=True)
    with pytest.raises(TypeError, match='DefaultSampler'):
        Runner.build_dataloader(cfg, seed=0)
    sampler = MultiSourceSampler(
        concat(LABELED, UNLABELED), source_ratio=[1, 3], seed=0)
    with pytest.raises(ValueError, match=r'batch_size`.*0'):
        MultiSourceBatchSampler(sampler, batch_size=0)
