"""Shared fixtures: tiny data sets in real on-disk formats and small
versions of mmpretrain's own configs."""
import datetime
import os
import os.path as osp
import pickle
import socket
import uuid
from collections import Counter

import numpy as np
import pytest
import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from PIL import Image

import mmsts  # noqa: F401  (registers the modules)
from mmsts.utils import fix_collate_fn_scope

#: The repository's root directory.
REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

# The mmcv-lite warning about compiled ops is expected on this stack.
pytest_plugins = []


def requires_cuda(covered_on_cpu: str):
    """Mark a test that needs a CUDA device: skipped without one, with a
    reason naming the CPU test that covers the same logic, and marked
    ``cuda``, which ``tools/benchmarks/gpu_check.sh`` runs.

    Args:
        covered_on_cpu (str): What covers the logic on CPU, for the reason.
    """

    def mark(test):
        skip = pytest.mark.skipif(
            not torch.cuda.is_available(),
            reason=f'needs a CUDA device; {covered_on_cpu}')
        return pytest.mark.cuda(skip(test))

    return mark


@pytest.fixture(autouse=True)
def _unformatted_config_text(monkeypatch):
    """Skip yapf when runners log and dump their config: formatting the
    semi-supervised configs (long RandAugment lists) takes seconds each
    time and is most of a tiny runner's start-up. The text stays valid
    Python, only unformatted; no test checks its layout."""
    monkeypatch.setattr('mmengine.config.config.FormatCode',
                        lambda text, **kwargs: (text, None))


@pytest.fixture(autouse=True)
def _fresh_message_hub():
    """Each test starts with its own current MessageHub: a runner of an
    earlier test leaves its hub current, with its `max_iters`, which
    averaged models read for their schedules and STS teachers for their
    last update."""
    MessageHub.get_instance(f'test-{uuid.uuid4().hex}')


@pytest.fixture
def accelerator_path(monkeypatch):
    """Take the accelerator (sync-free) code paths of the update and the
    NaN/Inf guard on CPU tensors."""
    monkeypatch.setattr('mmsts.smoothing.devices.HOST_DEVICE_TYPES', ())


def free_port() -> int:
    """A free TCP port on the loopback interface, for a gloo rendezvous."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def init_gloo(rank: int, port: int, world_size: int) -> None:
    """Join a CPU (gloo) process group on the loopback interface, with the
    variables torchrun would set and one torch thread per process."""
    os.environ.update(
        MASTER_ADDR='127.0.0.1',
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group(
        'gloo',
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120))


def make_imagenet_folder(root: str, num_classes: int = 2,
                         per_class: int = 4, size: int = 40) -> str:
    """Write ImageNet's layout: ``root/{train,val}/<wnid>/<name>.JPEG`` and
    the annotation lists ``root/meta/{train,val}.txt`` (``path label``)."""
    rng = np.random.default_rng(0)
    os.makedirs(osp.join(root, 'meta'), exist_ok=True)
    for split in ('train', 'val'):
        lines = []
        for c in range(num_classes):
            folder = osp.join(root, split, f'n{c:08d}')
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), np.uint8)
                name = f'n{c:08d}/{split}_{c}_{i}.JPEG'
                Image.fromarray(pixels).save(osp.join(root, split, name))
                lines.append(f'{name} {c}\n')
        with open(osp.join(root, 'meta', f'{split}.txt'), 'w') as f:
            f.writelines(lines)
    return root


def write_idx(path: str, array) -> None:
    """Write ``array`` (uint8) as an idx file, the format of (Fashion-)MNIST:
    a magic number with the number of dimensions, the sizes, the bytes."""
    import struct
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, 'wb') as f:
        f.write(struct.pack('>I', 0x800 + array.ndim))
        f.write(struct.pack(f'>{array.ndim}I', *array.shape))
        f.write(array.tobytes())


def make_fashion_mnist(root: str, train_per_class: int = 30,
                       num_test: int = 20) -> str:
    """Fashion-MNIST's four unzipped idx files, of random 28 x 28 images:
    ``train_per_class`` training images of each of the 10 classes
    (shuffled) and ``num_test`` test images."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, labels in (('train', np.repeat(np.arange(10),
                                              train_per_class)),
                          ('t10k', np.arange(num_test) % 10)):
        labels = rng.permutation(labels).astype(np.uint8)
        images = rng.integers(0, 256, (len(labels), 28, 28), np.uint8)
        write_idx(osp.join(root, f'{split}-images-idx3-ubyte'), images)
        write_idx(osp.join(root, f'{split}-labels-idx1-ubyte'), labels)
    return root


@pytest.fixture(scope='session')
def imagenet_root(tmp_path_factory):
    return make_imagenet_folder(str(tmp_path_factory.mktemp('imagenet')))


def _set_key(obj, key, value):
    """Recursively set ``key`` wherever it appears in dicts of a config."""
    if isinstance(obj, dict):
        for k in list(obj.keys()):
            if k == key:
                obj[k] = value
            else:
                _set_key(obj[k], key, value)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _set_key(item, key, value)


def small_selfsup_cfg(base: str, work_dir: str, data_root: str,
                      max_epochs: int = 2, hooks=None) -> Config:
    """An mmpretrain self-supervised config shrunk to run on CPU: ResNet-18,
    32-pixel crops, BN instead of SyncBN, batch 4, no workers."""
    # Inherit as a user's config would (this is what injects `_scope_`).
    os.makedirs(work_dir, exist_ok=True)
    child = osp.join(work_dir, 'child_config.py')
    with open(child, 'w') as f:
        f.write(f'_base_ = {base!r}\n')
    cfg = Config.fromfile(child)
    fix_collate_fn_scope(cfg)
    cfg.work_dir = work_dir
    cfg.model.backbone = dict(type='ResNet', depth=18, norm_cfg=dict(
        type='BN'), zero_init_residual=False)
    cfg.model.neck.in_channels = 512
    _set_key(cfg.model, 'hid_channels', 64)
    if cfg.model.type == 'BYOL':
        cfg.model.neck.out_channels = 32
        cfg.model.head.predictor.in_channels = 32
        cfg.model.head.predictor.out_channels = 32
    else:  # MoCo v2
        cfg.model.queue_len = 16
        cfg.model.feat_dim = cfg.model.neck.out_channels
    _set_key(cfg.model, 'norm_cfg', dict(type='BN'))
    _set_key(cfg.train_dataloader.dataset.pipeline, 'scale', 32)
    cfg.train_dataloader.batch_size = 4
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    cfg.train_dataloader.dataset.data_root = data_root
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs)
    cfg.default_hooks.checkpoint = dict(
        type='CheckpointHook', interval=1, max_keep_ckpts=-1)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=1)
    cfg.randomness = dict(seed=0)
    cfg.log_level = 'WARNING'
    cfg.custom_hooks = list(hooks or [])
    # Every config here is read from a `child_config.py`: without its own
    # name, two runners built in the same second share one message hub, and
    # `MessageHub.get_current_instance()` (where a teacher reads
    # `max_iters`) is not the one the second runner writes to.
    cfg.experiment_name = f'small-{uuid.uuid4().hex}'
    return cfg


BYOL_CFG = 'mmpretrain::byol/byol_resnet50_16xb256-coslr-200e_in1k.py'
MOCOV2_CFG = 'mmpretrain::mocov2/mocov2_resnet50_8xb32-coslr-200e_in1k.py'


class TeacherUpdateRecorder(Hook):
    """Records what every ``update_parameters`` call does to a teacher.

    Registered after the hooks that install the teacher (priority ``LOW``),
    it wraps the teacher's ``update_parameters``. For every call it compares
    each parameter after the call with its value before the call and with
    ``torch.lerp(before, student, momentum)`` computed here: ``'kept'``,
    ``'updated'``, ``'either'`` (the two are bitwise equal, so the call
    cannot be told apart) or ``'neither'``. The first call (update count 0)
    must copy the student: ``'copied'``.

    Args:
        get_teacher (callable): ``runner -> BaseAveragedModel``.
        momentum_at (callable): ``(step, max_iters) -> float``, the weight on
            the student expected at an update count.
    """

    priority = 'LOW'

    def __init__(self, get_teacher, momentum_at):
        self.get_teacher = get_teacher
        self.momentum_at = momentum_at
        self.calls = []

    def before_run(self, runner):
        teacher = self.get_teacher(runner)
        update = teacher.update_parameters
        max_iters = runner.max_iters

        @torch.no_grad()
        def recorded_update(model):
            step = int(teacher.steps)
            before = [p.clone() for p in teacher.module.parameters()]
            student = [p.detach().clone() for p in model.parameters()]
            update(model)
            after = list(teacher.module.parameters())
            if step == 0:
                kinds = [
                    'copied' if torch.equal(a, s) else 'neither'
                    for a, s in zip(after, student)
                ]
            else:
                momentum = self.momentum_at(step, max_iters)
                kinds = [
                    _update_kind(b, s, a, momentum)
                    for b, s, a in zip(before, student, after)
                ]
            buffers_copied = all(
                torch.equal(a, s)
                for a, s in zip(teacher.module.buffers(), model.buffers()))
            distance = torch.cat([(a - s).double().flatten()
                                  for a, s in zip(after, student)]).norm() / \
                torch.cat([s.double().flatten() for s in student]).norm()
            self.calls.append(
                dict(
                    step=step,
                    kinds=kinds,
                    buffers_copied=buffers_copied,
                    distance=float(distance)))

        teacher.update_parameters = recorded_update


def _update_kind(before, student, after, momentum):
    lerped = torch.lerp(before, student, momentum)
    kept, updated = torch.equal(after, before), torch.equal(after, lerped)
    if kept and updated:
        return 'either'
    return 'kept' if kept else 'updated' if updated else 'neither'


def assert_follows_sts(calls, masks):
    """Assert that recorded calls applied the STS rule with ``masks``.

    Args:
        calls (list): :attr:`TeacherUpdateRecorder.calls`.
        masks (FragmentMaskGenerator): The masks the teacher should draw.

    Returns:
        collections.Counter: How many tensor updates of each kind were seen
        after the first (copying) call.
    """
    assert [c['step'] for c in calls] == list(range(len(calls)))
    assert set(calls[0]['kinds']) == {'copied'}
    seen = Counter()
    for call in calls[1:]:
        flags = masks.update_flags(call['step'], len(call['kinds']))
        for index, (kind, flag) in enumerate(zip(call['kinds'], flags)):
            allowed = ('updated', 'either') if flag else ('kept', 'either')
            assert kind in allowed, (
                f'step {call["step"]}, tensor {index}: {kind}, but the mask '
                f'says {"update" if flag else "keep"}')
        seen.update(call['kinds'])
    assert all(c['buffers_copied'] for c in calls)
    return seen


class StopAfterEpoch(Hook):
    """Interrupt training after an epoch, once its checkpoint is saved, as
    a killed job would be.

    Args:
        epoch (int): The last epoch (1-based) to train.
    """

    priority = 'LOWEST'

    def __init__(self, epoch):
        self.epoch = epoch

    def after_train_epoch(self, runner):
        if runner.epoch + 1 >= self.epoch:
            runner.train_loop.stop_training = True


def make_cifar_pickles(root: str, num_classes: int = 10, per_class: int = 6,
                       test_per_class: int = 2, seed: int = 0) -> str:
    """Write a tiny CIFAR-10 (``num_classes=10``) or CIFAR-100 (``100``) in
    the python pickle format that mmpretrain's ``CIFAR10``/``CIFAR100`` read:
    ``cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` or
    ``cifar-100-python/{train,test,meta}``, with the real keys (``data`` as
    N x 3072 uint8 rows in R, G, B planes, ``labels``/``fine_labels``, ...).
    Images are random; training images are ``per_class`` per class.

    The data sets check the md5 sums of the real files, which these cannot
    match: load them under the ``no_cifar_md5`` fixture.

    Returns:
        str: ``root``, the ``data_root`` of the data set.
    """
    if num_classes not in (10, 100):
        raise ValueError(f'num_classes must be 10 or 100, got {num_classes}')
    rng = np.random.default_rng(seed)

    def batch(n_per_class, name, label_key):
        labels = np.tile(np.arange(num_classes), n_per_class)
        rng.shuffle(labels)
        entry = {
            'batch_label': name,
            label_key: labels.tolist(),
            'data': rng.integers(0, 256, (len(labels), 3072), np.uint8),
            'filenames': [f'{name}_{i}.png' for i in range(len(labels))],
        }
        if num_classes == 100:
            entry['coarse_labels'] = (labels // 5).tolist()
        return entry

    def dump(obj, path):
        with open(path, 'wb') as f:
            pickle.dump(obj, f, protocol=2)

    names = [f'class_{c}' for c in range(num_classes)]
    if num_classes == 10:
        folder = osp.join(root, 'cifar-10-batches-py')
        os.makedirs(folder, exist_ok=True)
        train = batch(per_class, 'training batch', 'labels')
        for i in range(5):  # spread the training set over the 5 batches
            part = {k: v[i::5] for k, v in train.items() if k != 'batch_label'}
            part['batch_label'] = f'training batch {i + 1} of 5'
            dump(part, osp.join(folder, f'data_batch_{i + 1}'))
        dump(batch(test_per_class, 'testing batch 1 of 1', 'labels'),
             osp.join(folder, 'test_batch'))
        dump({'label_names': names, 'num_cases_per_batch': 10000,
              'num_vis': 3072}, osp.join(folder, 'batches.meta'))
    else:
        folder = osp.join(root, 'cifar-100-python')
        os.makedirs(folder, exist_ok=True)
        dump(batch(per_class, 'training batch 1 of 1', 'fine_labels'),
             osp.join(folder, 'train'))
        dump(batch(test_per_class, 'testing batch 1 of 1', 'fine_labels'),
             osp.join(folder, 'test'))
        dump({'fine_label_names': names,
              'coarse_label_names': [f'super_{c}' for c in range(20)]},
             osp.join(folder, 'meta'))
    return root


@pytest.fixture
def no_cifar_md5(monkeypatch):
    """Accept the files of :func:`make_cifar_pickles` in mmpretrain's CIFAR
    data sets, which check the md5 sums of the real CIFAR files."""
    import mmpretrain.datasets.cifar as cifar
    monkeypatch.setattr(cifar, 'check_md5', lambda *args, **kwargs: True)
