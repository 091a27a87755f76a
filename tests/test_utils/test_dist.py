"""The CPU multi-process path: ``tools/dist_train.sh`` (torchrun + gloo) and
:mod:`mmsts.utils.dist`."""
import os
import os.path as osp
import socket
import subprocess
import sys
from glob import glob

import pytest
import torch
import torch.distributed as torch_dist
import torch.nn as nn
from mmengine.config import Config
from mmengine.fileio import load
from mmengine.registry import MODEL_WRAPPERS
from mmpretrain.registry import MODELS

from conftest import REPO_ROOT, BYOL_CFG, small_selfsup_cfg
from mmsts.utils import setup_cpu_distributed
from mmsts.utils.dist import CPUDistributedDataParallel, torchrun_env

REPO = REPO_ROOT

# Imported by the training processes through `custom_imports`: saves what
# each rank holds at the end of the run.
RANK_DUMP_HOOK = '''
import os.path as osp

import torch
from mmengine.dist import get_dist_info
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmpretrain.registry import HOOKS


@HOOKS.register_module()
class RankDumpHook(Hook):
    """Save this rank's teacher and student to work_dir/rank<r>.pth."""

    def after_run(self, runner):
        model = runner.model
        wrapped = is_model_wrapper(model)
        if wrapped:
            model = model.module
        rank, world_size = get_dist_info()
        torch.save(
            dict(world_size=world_size,
                 wrapper=type(runner.model).__name__,
                 teacher=model.target_net.state_dict(),
                 student=model.backbone.state_dict()),
            osp.join(runner.work_dir, f'rank{rank}.pth'))
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def is_buffer(key: str) -> bool:
    return key.rsplit('.', 1)[-1] in ('running_mean', 'running_var',
                                      'num_batches_tracked')


def test_dist_train_sh_on_cpu_keeps_teachers_identical(tmp_path,
                                                       imagenet_root):
    """Two gloo processes: DDP keeps the students equal, and STS draws the
    same masks on both ranks, so the teachers stay equal too."""
    (tmp_path / 'rank_dump_hook.py').write_text(RANK_DUMP_HOOK)
    work_dir = str(tmp_path / 'work_dir')
    cfg = small_selfsup_cfg(
        BYOL_CFG,
        work_dir,
        imagenet_root,
        max_epochs=2,
        hooks=[
            dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.7),
            dict(type='RankDumpHook'),
        ])
    cfg.custom_imports = dict(
        imports=['rank_dump_hook'], allow_failed_imports=False)
    cfg_path = str(tmp_path / 'byol_sts_dist.py')
    cfg.dump(cfg_path)

    env = dict(
        os.environ,
        PYTHON=sys.executable,
        PORT=str(free_port()),
        OMP_NUM_THREADS='1',
        PYTHONPATH=str(tmp_path))
    proc = subprocess.run(['bash', 'tools/dist_train.sh', cfg_path, '2'],
                          cwd=REPO,
                          env=env,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:]
    # The neck's default SyncBN was reverted for CPU, with a warning.
    assert 'SyncBatchNorm layers were reverted to BatchNorm' in proc.stdout

    ranks = [
        torch.load(osp.join(work_dir, f'rank{r}.pth'), map_location='cpu')
        for r in (0, 1)
    ]
    assert all(r['world_size'] == 2 for r in ranks)
    assert all(r['wrapper'] == 'CPUDistributedDataParallel' for r in ranks)
    # 8 images, 2 ranks, batch 4: one iteration per epoch.
    assert all(int(r['teacher']['steps']) == 2 for r in ranks)
    for part in ('teacher', 'student'):
        params = [k for k in ranks[0][part] if not is_buffer(k)]
        assert params
        for key in params:
            assert torch.equal(ranks[0][part][key], ranks[1][part][key]), (
                f'{part} {key} differs between the ranks')
    # Each rank saw its own shard: BN statistics (not synchronised on CPU)
    # differ, so the test would notice ranks training on the same data.
    assert not torch.equal(ranks[0]['student']['bn1.running_mean'],
                           ranks[1]['student']['bn1.running_mean'])
    # The teacher is smoothed, not a copy of the student.
    teacher_backbone = {
        k[len('module.0.'):]: v
        for k, v in ranks[0]['teacher'].items() if k.startswith('module.0.')
    }
    assert any(not torch.equal(v, ranks[0]['student'][k])
               for k, v in teacher_backbone.items() if not is_buffer(k))
    # The checkpoint (written by rank 0) holds that teacher.
    ckpt = torch.load(osp.join(work_dir, 'epoch_2.pth'), map_location='cpu')
    for key, value in ranks[0]['teacher'].items():
        assert torch.equal(ckpt['state_dict'][f'target_net.{key}'], value)


def classifier_cfg(data_root: str) -> Config:
    """A ResNet-18 classifier of 2 classes tested on 32-pixel images."""
    return Config(
        dict(
            default_scope='mmpretrain',
            model=dict(
                type='ImageClassifier',
                backbone=dict(type='ResNet', depth=18),
                neck=dict(type='GlobalAveragePooling'),
                head=dict(
                    type='LinearClsHead', num_classes=2, in_channels=512)),
            data_preprocessor=dict(
                mean=[123.675, 116.28, 103.53],
                std=[58.395, 57.12, 57.375],
                to_rgb=True),
            test_dataloader=dict(
                batch_size=2,
                num_workers=0,
                dataset=dict(
                    type='ImageNet',
                    data_root=data_root,
                    split='val',
                    pipeline=[
                        dict(type='LoadImageFromFile'),
                        dict(type='Resize', scale=32),
                        dict(type='PackInputs')
                    ]),
                sampler=dict(type='DefaultSampler', shuffle=False)),
            test_evaluator=dict(type='Accuracy', topk=(1, )),
            test_cfg=dict(),
            log_level='WARNING'))


def test_dist_test_sh_on_cpu_gathers_all_predictions(tmp_path, imagenet_root):
    cfg = classifier_cfg(imagenet_root)
    cfg_path = str(tmp_path / 'classifier.py')
    cfg.dump(cfg_path)
    # A head that says "class 1" whatever the image, so the expected
    # predictions are known.
    model = MODELS.build(cfg.model)
    with torch.no_grad():
        model.head.fc.weight.zero_()
        model.head.fc.bias.copy_(torch.tensor([0., 3.]))
    ckpt = str(tmp_path / 'classifier.pth')
    torch.save(dict(state_dict=model.state_dict()), ckpt)

    preds = str(tmp_path / 'preds.pkl')
    env = dict(
        os.environ,
        PYTHON=sys.executable,
        PORT=str(free_port()),
        OMP_NUM_THREADS='1')
    proc = subprocess.run([
        'bash', 'tools/dist_test.sh', cfg_path, ckpt, '2', '--work-dir',
        str(tmp_path / 'work_dir'), '--out', preds
    ],
                          cwd=REPO,
                          env=env,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stdout[-4000:]
    results = load(preds)
    # The 8 val images, each once, gathered from the two ranks in order.
    assert [r['img_path'] for r in results] == sorted(r['img_path']
                                                      for r in results)
    assert len({r['img_path'] for r in results}) == 8
    expected = torch.softmax(torch.tensor([0., 3.]), 0)
    for result in results:
        assert int(result['pred_label']) == 1
        assert torch.allclose(result['pred_score'], expected, atol=1e-6)
    # Half of the val images are of class 1.
    (metrics_file, ) = glob(str(tmp_path / 'work_dir' / '*' / '*.json'))
    assert load(metrics_file)['accuracy/top1'] == pytest.approx(50.0)


# ----------------------------------------------------------------------------
# mmsts.utils.dist in this process
# ----------------------------------------------------------------------------


def test_setup_cpu_distributed_leaves_other_runs_alone(monkeypatch):
    cfg = Config(
        dict(launcher='none', env_cfg=dict(dist_cfg=dict(backend='nccl'))))
    assert setup_cpu_distributed(cfg) is False
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    assert 'model_wrapper_cfg' not in cfg

    # With CUDA, distributed runs are MMEngine's business: nothing changes.
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    cfg.launcher = 'pytorch'
    assert setup_cpu_distributed(cfg) is False
    assert cfg.env_cfg.dist_cfg.backend == 'nccl'
    assert 'model_wrapper_cfg' not in cfg
    assert not torch_dist.is_initialized()


def test_setup_cpu_distributed_rejects_unknown_launcher(monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    with pytest.raises(ValueError, match="got 'torchrun'"):
        setup_cpu_distributed(Config(dict(launcher='torchrun')))


@pytest.fixture
def process_group(monkeypatch):
    """Run the test as rank 0 of 1 (torchrun's variables), then clean up."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    for key, value in dict(
            RANK='0',
            WORLD_SIZE='1',
            LOCAL_RANK='0',
            MASTER_ADDR='127.0.0.1',
            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    yield
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def test_setup_cpu_distributed_inits_gloo_and_wrapper(process_group):
    cfg = Config(
        dict(
            launcher='pytorch',
            find_unused_parameters=True,
            env_cfg=dict(dist_cfg=dict(backend='nccl', timeout=60))))
    assert setup_cpu_distributed(cfg) is True
    assert torch_dist.is_initialized()
    assert torch_dist.get_backend() == 'gloo'
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg == dict(
        type='mmpretrain.CPUDistributedDataParallel',
        device_ids=None,
        broadcast_buffers=False,
        find_unused_parameters=True)
    # Built as the runner does, with its CUDA default device_ids: a CPU DDP.
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4))
    wrapper = MODEL_WRAPPERS.build(
        cfg.model_wrapper_cfg, default_args=dict(module=model, device_ids=[0]))
    assert isinstance(wrapper, CPUDistributedDataParallel)
    assert wrapper.device_ids is None
    assert not any(
        isinstance(m, nn.SyncBatchNorm) for m in wrapper.module.modules())
    assert isinstance(wrapper.module[1], nn.modules.batchnorm._BatchNorm)
    # The parameters are kept (shared), and a training step runs on CPU.
    assert wrapper.module[1].weight is model[1].weight
    wrapper(torch.rand(2, 3, 4, 4)).sum().backward()
    assert model[0].weight.grad is not None


def test_user_wrapper_config_is_kept(process_group):
    cfg = Config(
        dict(
            launcher='pytorch',
            model_wrapper_cfg=dict(
                type='MMDistributedDataParallel', broadcast_buffers=True),
            env_cfg=dict(dist_cfg=dict(backend='gloo'))))
    assert setup_cpu_distributed(cfg) is True
    assert cfg.model_wrapper_cfg == dict(
        type='mmpretrain.CPUDistributedDataParallel',
        broadcast_buffers=True,
        device_ids=None)

    # Another DDP subclass only loses the CUDA default device_ids; other
    # wrappers take no device_ids.
    cfg = Config(
        dict(
            launcher='pytorch',
            model_wrapper_cfg=dict(type='DistributedDataParallel')))
    assert setup_cpu_distributed(cfg) is True
    assert cfg.model_wrapper_cfg == dict(
        type='DistributedDataParallel', device_ids=None)
    cfg = Config(
        dict(
            launcher='pytorch',
            model_wrapper_cfg=dict(type='MMFullyShardedDataParallel')))
    assert setup_cpu_distributed(cfg) is True
    assert cfg.model_wrapper_cfg == dict(type='MMFullyShardedDataParallel')

    with pytest.raises(ValueError, match=r'device_ids must be None.*\[0\]'):
        CPUDistributedDataParallel(nn.Linear(2, 2), device_ids=[0])


def test_torchrun_env_from_slurm_and_mpi():
    slurm = dict(
        SLURM_PROCID='3',
        SLURM_NTASKS='4',
        SLURM_LOCALID='1',
        MASTER_ADDR='node7')
    assert torchrun_env('slurm', slurm) == dict(
        RANK='3',
        WORLD_SIZE='4',
        LOCAL_RANK='1',
        MASTER_ADDR='node7',
        MASTER_PORT='29500')
    mpi = dict(
        OMPI_COMM_WORLD_RANK='1',
        OMPI_COMM_WORLD_SIZE='2',
        OMPI_COMM_WORLD_LOCAL_RANK='1',
        MASTER_ADDR='10.0.0.1',
        MASTER_PORT='1234')
    assert torchrun_env('mpi', mpi) == dict(
        RANK='1',
        WORLD_SIZE='2',
        LOCAL_RANK='1',
        MASTER_ADDR='10.0.0.1',
        MASTER_PORT='1234')
    with pytest.raises(RuntimeError, match=r"\['MASTER_ADDR'\].*mpirun"):
        torchrun_env('mpi', {
            k: v
            for k, v in mpi.items() if k != 'MASTER_ADDR'
        })
    with pytest.raises(RuntimeError, match=r"\['RANK', 'WORLD_SIZE'\]"):
        torchrun_env('pytorch', dict(MASTER_ADDR='127.0.0.1'))
