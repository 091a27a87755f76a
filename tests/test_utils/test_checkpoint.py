"""A checkpoint trained with SpatialTemporalSmoothingHook loads into plain
mmpretrain, in a process that never imports mmsts."""
import os
import os.path as osp
import subprocess
import sys
import uuid

import pytest
import torch
from conftest import REPO_ROOT, BYOL_CFG, small_selfsup_cfg
from mmengine.config import Config
from mmengine.runner import Runner

from mmsts.models import SpatialTemporalSmoothing, sts_records


# Runs with plain mmpretrain; every check is an assert, so a failure exits
# non-zero with the reason on stderr.
VANILLA_LOAD = """
import sys
import torch
from mmengine.config import Config
from mmengine.runner import load_checkpoint
from mmpretrain.models.utils import CosineEMA
from mmpretrain.registry import MODELS
from mmpretrain.utils import register_all_modules

register_all_modules()
cfg = Config.fromfile({model_cfg!r})
teacher = torch.load({teacher!r})

# The published checkpoint (meta + state_dict), through MMEngine's normal,
# weights-only loading.
model = MODELS.build(cfg.model)
assert type(model.target_net) is CosineEMA, type(model.target_net)
load_checkpoint(model, {published!r}, map_location='cpu', strict=True)
loaded = model.target_net.state_dict()
assert list(loaded) == list(teacher), (list(loaded)[:3], list(teacher)[:3])
assert all(torch.equal(loaded[k], teacher[k]) for k in teacher)

# The full training checkpoint. Without an allow-list, torch >= 2.6 needs
# the full unpickler for any MMEngine 0.10.7 checkpoint (see
# test_resume.py); this file is our own. Unpickling would import mmsts if
# the file referred to any of its classes.
ckpt = torch.load({full!r}, weights_only=False)
model = MODELS.build(cfg.model)
model.load_state_dict(ckpt['state_dict'], strict=True)
loaded = model.target_net.state_dict()
assert all(torch.equal(loaded[k], teacher[k]) for k in teacher)

assert 'mmsts' not in sys.modules, 'mmsts was imported'
print('OK', int(loaded['steps']))
"""


@pytest.fixture(scope='module')
def trained(imagenet_root, tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('compat')
    cfg = small_selfsup_cfg(
        BYOL_CFG,
        str(work_dir),
        imagenet_root,
        max_epochs=1,
        hooks=[dict(type='SpatialTemporalSmoothingHook', preserve_prob=0.7)])
    cfg.default_hooks.checkpoint.published_keys = ['meta', 'state_dict']
    cfg.experiment_name = f'compat-{uuid.uuid4().hex}'
    runner = Runner.from_cfg(cfg)
    runner.train()
    teacher = runner.model.target_net
    assert type(teacher) is SpatialTemporalSmoothing
    teacher_file = osp.join(work_dir, 'teacher.pt')
    torch.save({
        k: v.clone()
        for k, v in teacher.state_dict().items()
    }, teacher_file)
    model_cfg = osp.join(work_dir, 'model_cfg.py')
    Config(dict(model=cfg.model)).dump(model_cfg)
    published = [
        f for f in os.listdir(work_dir)
        if f.startswith('epoch_1-') and f.endswith('.pth')
    ]
    assert len(published) == 1, os.listdir(work_dir)
    return dict(
        model_cfg=model_cfg,
        teacher=teacher_file,
        published=osp.join(work_dir, published[0]),
        full=osp.join(work_dir, 'epoch_1.pth'),
        steps=int(teacher.steps))


def test_checkpoint_loads_in_plain_mmpretrain(trained):
    code = VANILLA_LOAD.format(
        model_cfg=trained['model_cfg'],
        teacher=trained['teacher'],
        published=trained['published'],
        full=trained['full'])
    env = {
        k: v
        for k, v in os.environ.items() if not k.startswith('TORCH_FORCE_')
    }
    env['OMP_NUM_THREADS'] = '1'
    proc = subprocess.run([sys.executable, '-c', code],
                          cwd=REPO_ROOT,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ['OK', str(trained['steps'])]
    assert trained['steps'] == 2  # two updates: a copy, then one STS step


def test_checkpoint_records_the_sts_setup(trained):
    """The teacher's settings are kept in the checkpoint's message hub as
    plain values (loadable with torch's weights-only loading)."""
    ckpt = torch.load(trained['full'])
    records = sts_records(ckpt)
    assert set(records) == {'target_net'}
    settings = records['target_net']['settings']
    assert settings['preserve_prob'] == 0.7
    assert settings['granularity'] == 'tensor'
    assert settings['seed'] == ckpt['meta']['seed']
    assert settings['momentum_schedule'] == 'cosine'
    assert records['target_net']['history'] == [dict(step=0, **settings)]
