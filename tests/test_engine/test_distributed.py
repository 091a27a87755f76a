"""STS teachers stay identical across the ranks of a distributed run.

Two CPU processes (gloo) seed their global RNGs differently, as MMEngine's
``diff_rank_seed`` does, and train on different data under
``DistributedDataParallel``. The counter-based masks of mmsts are the same on
both ranks, so the teachers stay bitwise identical; the control, the
official code's per-rank ``torch.rand(1) < p`` draws, makes them diverge.
The same processes then train BYOL with SpatialTemporalSmoothingHook through
MMEngine's runner and DDP wrapper with ``diff_rank_seed=True``.
"""
import copy
import gc
import time
import uuid

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from conftest import BYOL_CFG, free_port, init_gloo, small_selfsup_cfg
from mmengine.runner import Runner
from torch.nn.parallel import DistributedDataParallel

from mmsts.models import SpatialTemporalSmoothing

WORLD_SIZE = 2
PRESERVE_PROB = 0.5
MOMENTUM = 0.1  # weight on the student; the teacher keeps 0.9
STEPS = 8


def gather_flat(tensors):
    """Every rank's ``tensors`` as one flat vector each, in rank order."""
    flat = torch.cat([t.detach().double().flatten() for t in tensors])
    out = [torch.empty_like(flat) for _ in range(WORLD_SIZE)]
    dist.all_gather(out, flat)
    return out


def same_on_all_ranks(tensors):
    first, *others = gather_flat(tensors)
    return all(torch.equal(first, other) for other in others)


def spawn(fn, *args, timeout=300):
    """Run ``fn(rank, *args)`` on every rank; fail (not hang) on timeout."""
    context = mp.start_processes(
        fn, args=args, nprocs=WORLD_SIZE, join=False, start_method='spawn')
    deadline = time.monotonic() + timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.terminate()
            pytest.fail(f'{fn.__name__} did not finish in {timeout} s')


# ----------------------------------------------------------------------
# What each rank runs
# ----------------------------------------------------------------------
@torch.no_grad()
def official_update(teacher, student, preserve_prob, momentum):
    """The official code's rule: one draw of the global RNG per tensor."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        if torch.rand(1).item() < preserve_prob:
            continue
        t.mul_(1 - momentum).add_(s, alpha=momentum)


def train_ddp_teachers(rank):
    """A student under DDP, with STS teachers and the control."""
    torch.manual_seed(1000 + rank)  # different on every rank
    student = nn.Sequential(
        nn.Linear(8, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 32),
        nn.ReLU(), nn.Linear(32, 4))
    ddp = DistributedDataParallel(student)  # broadcasts rank 0's weights
    teachers = {
        granularity:
        SpatialTemporalSmoothing(
            student,
            preserve_prob=PRESERVE_PROB,
            momentum=MOMENTUM,
            granularity=granularity,
            seed=0)
        for granularity in ('tensor', 'element')
    }
    control = copy.deepcopy(student).requires_grad_(False)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    batches = []
    for _ in range(STEPS):
        x, y = torch.randn(16, 8), torch.randint(0, 4, (16, ))
        batches.append(x)
        optimizer.zero_grad()
        F.cross_entropy(ddp(x), y).backward()
        optimizer.step()
        for teacher in teachers.values():
            teacher.update_parameters(student)
        official_update(control, student, PRESERVE_PROB, MOMENTUM)

    results = dict(
        data_same=same_on_all_ranks(batches),
        student_same=same_on_all_ranks(list(student.parameters())),
        control_same=same_on_all_ranks(list(control.parameters())),
    )
    for granularity, teacher in teachers.items():
        state = teacher.state_dict()
        results[f'{granularity}_same'] = same_on_all_ranks(
            list(state.values()))
        results[f'{granularity}_steps'] = int(teacher.steps)
        results[f'{granularity}_differs_from_student'] = any(
            not torch.equal(t, s)
            for t, s in zip(teacher.module.parameters(), student.parameters()))
    return results


def train_byol_with_hook(rank, work_dir, data_root):
    """BYOL + SpatialTemporalSmoothingHook through MMEngine's runner, with
    MMEngine's DDP wrapper and ``diff_rank_seed``."""
    cfg = small_selfsup_cfg(
        BYOL_CFG,
        work_dir,
        data_root,
        max_epochs=4,
        hooks=[dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.5)])
    cfg.experiment_name = f'dist-{uuid.uuid4().hex}'
    # NonLinearNeck defaults to SyncBN, which DDP refuses on CPU (a single
    # process run reverts it to BN).
    cfg.model.neck.norm_cfg = dict(type='BN1d')
    cfg.model.head.predictor.norm_cfg = dict(type='BN1d')
    # The process group exists, so the runner does not call the CUDA-only
    # init_dist; DDP without CUDA device ids.
    cfg.launcher = 'pytorch'
    cfg.env_cfg.dist_cfg = dict(backend='gloo')
    cfg.model_wrapper_cfg = dict(
        type='MMDistributedDataParallel',
        device_ids=None,
        broadcast_buffers=False)
    cfg.randomness = dict(seed=0, diff_rank_seed=True)
    cfg.default_hooks.checkpoint = None
    runner = Runner.from_cfg(cfg)
    runner.train()
    model = runner.model.module
    teacher = model.target_net
    student = nn.Sequential(model.backbone, model.neck)
    seeds = [None] * WORLD_SIZE
    dist.all_gather_object(seeds, (runner.seed, teacher.smoother.seed))
    results = dict(
        seeds=seeds,
        teacher_type=type(teacher).__name__,
        steps=int(teacher.steps),
        max_iters=runner.max_iters,
        student_same=same_on_all_ranks(list(student.parameters())),
        teacher_same=same_on_all_ranks(list(teacher.module.parameters())),
    )
    # Free the DDP wrapper (held in reference cycles of the runner) while
    # the interpreter is alive: gloo aborts if it is torn down at exit.
    del runner, model, teacher, student
    gc.collect()
    return results


def worker(rank, port, work_dir, data_root, out_file):
    init_gloo(rank, port, WORLD_SIZE)
    results = dict(
        ddp=train_ddp_teachers(rank),
        runner=train_byol_with_hook(rank, work_dir, data_root))
    if rank == 0:
        torch.save(results, out_file)
    dist.destroy_process_group()


@pytest.fixture(scope='module')
def results(imagenet_root, tmp_path_factory):
    """One pair of processes runs both scenarios (starting them is the
    slow part)."""
    tmp = tmp_path_factory.mktemp('dist')
    out_file = str(tmp / 'results.pt')
    spawn(worker, free_port(), str(tmp / 'work_dir'), imagenet_root, out_file)
    return torch.load(out_file)


@pytest.fixture
def ddp_results(results):
    return results['ddp']


# ----------------------------------------------------------------------
# The teacher wrapper under DistributedDataParallel
# ----------------------------------------------------------------------
def test_ranks_really_differ(ddp_results):
    """Each rank drew its own data; DDP kept the students identical."""
    assert not ddp_results['data_same']
    assert ddp_results['student_same']


@pytest.mark.parametrize('granularity', ['tensor', 'element'])
def test_sts_teachers_identical_across_ranks(ddp_results, granularity):
    assert ddp_results[f'{granularity}_steps'] == STEPS
    assert ddp_results[f'{granularity}_differs_from_student']
    assert ddp_results[f'{granularity}_same']


def test_global_rng_masks_diverge(ddp_results):
    """Control: masks from each rank's global RNG give different teachers,
    so the test above would catch rank-dependent masks."""
    assert ddp_results['student_same']
    assert not ddp_results['control_same']


# ----------------------------------------------------------------------
# The hook in a distributed MMEngine run with diff_rank_seed=True
# ----------------------------------------------------------------------
def test_hook_masks_identical_with_diff_rank_seed(results):
    """With ``diff_rank_seed``, ``runner.seed`` differs per rank; the hook
    must still key the masks on one seed for the whole run."""
    results = results['runner']
    assert results['teacher_type'] == 'SpatialTemporalSmoothing'
    # 8 images over 2 ranks, batch 4 per rank: one iteration per epoch.
    assert results['steps'] == results['max_iters'] == 4
    runner_seeds = [s for s, _ in results['seeds']]
    mask_seeds = [m for _, m in results['seeds']]
    assert runner_seeds == [0, 1]  # MMEngine's diff_rank_seed
    assert mask_seeds == [0, 0]
    assert results['student_same']
    assert results['teacher_same']
