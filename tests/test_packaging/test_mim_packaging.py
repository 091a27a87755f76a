"""mmsts as an OpenMMLab package: the model index, ``mmsts/.mim`` and the
``mmsts::`` config prefix, in the editable install of this repository and
in a wheel installed as a user installs it.

``test_wheel_*`` builds a wheel of this tree, installs it (not editable) in
a temporary environment that reuses this environment's packages, and runs
``Config.fromfile``, ``mim search`` and ``mim train`` there, from outside the
repository (about 40-60 s on 2 cores).
"""
import glob
import os
import os.path as osp
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile

import pytest
from mmengine.config import Config
from mmengine.fileio import load
from mmengine.registry import HOOKS, DefaultScope

import mmsts
from conftest import REPO_ROOT, make_imagenet_folder

STS_CONFIG = 'byol/byol_resnet50_sts_8xb32-coslr-200e_in1k.py'
TMA_CONFIG = 'byol/byol_resnet50_tma_8xb32-coslr-200e_in1k.py'
#: Small-scale demo and study configs, not in the model index.
SMALL_DATA = ('digits', 'fashion-mnist')


def _metafiles():
    index = load(osp.join(REPO_ROOT, 'model-index.yml'))
    return [osp.join(REPO_ROOT, path) for path in index['Import']]


def _indexed_models():
    return [m for path in _metafiles() for m in load(path)['Models']]


def test_model_index_lists_every_method_and_existing_configs():
    metafiles = _metafiles()
    methods = {osp.basename(osp.dirname(p)) for p in metafiles}
    assert methods == {'byol', 'mocov2', 'fixmatch', 'kd', 'noisy_student'}
    models = _indexed_models()
    names = [m['Name'] for m in models]
    assert len(names) == len(set(names)), 'model names must be unique'
    for meta in metafiles:
        collections = {c['Name'] for c in load(meta)['Collections']}
        for model in load(meta)['Models']:
            assert model['In Collection'] in collections
            assert osp.isfile(osp.join(REPO_ROOT, model['Config'])), \
                f"{model['Name']}: {model['Config']} does not exist"
            # Nothing is measured or released yet: no invented numbers.
            assert model['Results'] is None and model['Weights'] is None
            for down in model.get('Downstream', []):
                assert down in names
    # Every ImageNet recipe of BYOL, MoCo v2, KD and Noisy Student is
    # indexed.
    indexed = {m['Config'] for m in models}
    for method in ('byol', 'mocov2', 'kd', 'noisy_student'):
        for path in glob.glob(
                osp.join(REPO_ROOT, 'configs', method, '**', '*.py'),
                recursive=True):
            if not any(data in path for data in SMALL_DATA):
                assert osp.relpath(path, REPO_ROOT) in indexed, path


def test_config_names_are_unique():
    """``mim train mmsts NAME`` finds a config by its file name."""
    names = [
        osp.basename(p) for p in glob.glob(
            osp.join(REPO_ROOT, 'configs', '**', '*.py'), recursive=True)
    ]
    assert sorted(set(names)) == sorted(names)


def _build_sts_hook(cfg):
    """Build the config's hook as the runner does (mmpretrain's default
    scope; the hook dict carries ``_scope_='mmsts'`` from ``mmsts::``)."""
    (hook_cfg, ) = cfg.custom_hooks
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return HOOKS.build(hook_cfg)


def _child_config(tmp_dir, base=TMA_CONFIG):
    path = osp.join(str(tmp_dir), 'child.py')
    with open(path, 'w') as f:
        f.write(f"_base_ = 'mmsts::{base}'\n"
                'train_dataloader = dict(batch_size=16)\n')
    return path


def test_mmsts_scope_in_this_environment(tmp_path):
    """``_base_ = 'mmsts::...'`` in this (editable) environment, from a
    directory outside the repository."""
    if not osp.isdir(osp.join(osp.dirname(mmsts.__file__), '.mim')):
        pytest.fail('mmsts/.mim is missing: reinstall the editable package '
                    '(`make env` or `pip install -e .`), which links it')
    script = textwrap.dedent(f"""
        import os.path as osp
        import mmsts
        from mmengine.config import Config
        cfg = Config.fromfile({_child_config(tmp_path)!r})
        # The hook comes from the TMA config, through mmsts's scope.
        assert cfg.custom_hooks[0].preserve_prob == 0.0
        assert cfg.custom_hooks[0]._scope_ == 'mmsts'
        assert cfg.train_dataloader.batch_size == 16
        assert cfg.model.type == 'BYOL'
        print('OK')
    """)
    out = subprocess.run([sys.executable, '-c', script],
                         cwd=str(tmp_path),
                         capture_output=True,
                         text=True)
    assert out.returncode == 0 and 'OK' in out.stdout, out.stderr[-3000:]


def test_mmsts_scope_builds_hooks(tmp_path):
    cfg = Config.fromfile(_child_config(tmp_path))
    hook = _build_sts_hook(cfg)
    assert type(hook).__name__ == 'SpatialTemporalSmoothingHook'
    assert hook.overrides['preserve_prob'] == 0.0


def _copy_tree(dst):
    """The repository's files as git sees them (tracked and new, not
    ignored): building in a copy leaves this tree's mmsts/.mim alone."""
    files = subprocess.run(
        ['git', 'ls-files', '-z', '--cached', '--others',
         '--exclude-standard'],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True).stdout.decode().split('\0')
    for rel in filter(None, files):
        src = osp.join(REPO_ROOT, rel)
        if not osp.isfile(src):  # deleted in the work tree
            continue
        os.makedirs(osp.join(dst, osp.dirname(rel)), exist_ok=True)
        shutil.copy2(src, osp.join(dst, rel))
    return dst


def _environment(root, wheel):
    """A virtual environment with ``wheel`` installed and this
    environment's packages (but not its editable mmsts) behind it."""
    venv = osp.join(root, 'venv')
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', venv],
                   check=True)
    python = osp.join(venv, 'bin', 'python')
    site = subprocess.run(
        [python, '-c', 'import sysconfig; print(sysconfig.get_paths()'
         '["purelib"])'],
        capture_output=True,
        text=True,
        check=True).stdout.strip()
    subprocess.run([
        sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
        '--no-index', '--target', site, wheel
    ],
                   check=True)
    # A path added by a .pth file is not scanned for .pth files, so the
    # editable install of this repository (a .pth finder) stays out.
    with open(osp.join(site, 'project_packages.pth'), 'w') as f:
        f.write(sysconfig.get_paths()['purelib'] + '\n')
    return python


def test_wheel_install_resolves_configs_with_mmengine_and_mim(tmp_path):
    src = _copy_tree(str(tmp_path / 'src'))
    dist = str(tmp_path / 'dist')
    subprocess.run([
        sys.executable, '-m', 'pip', 'wheel', '--quiet', '--no-deps',
        '--no-build-isolation', '--no-index', '-w', dist, src
    ],
                   check=True)
    (wheel, ) = glob.glob(osp.join(dist, 'mmsts-*.whl'))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names
                               if n.endswith('.dist-info/METADATA')))
    for path in ('mmsts/.mim/model-index.yml', 'mmsts/.mim/configs/' +
                 STS_CONFIG, 'mmsts/.mim/configs/byol/metafile.yml',
                 'mmsts/.mim/tools/train.py', 'mmsts/.mim/tools/test.py',
                 'mmsts/.mim/tools/dist_train.sh'):
        assert path in names, path
    assert not any('__pycache__' in n for n in names)
    assert b'Provides-Extra: tensorboard' in metadata

    python = _environment(str(tmp_path), wheel)
    work = tmp_path / 'work'
    work.mkdir()

    def run(*args):
        out = subprocess.run([python, *args],
                             cwd=str(work),
                             capture_output=True,
                             text=True)
        assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
        return out.stdout

    # MMEngine: `_base_ = 'mmsts::...'` resolves to the installed copy.
    child = _child_config(work)
    printed = run(
        '-c',
        textwrap.dedent(f"""
        import mmsts
        from mmengine.config import Config
        from mmengine.registry import HOOKS, DefaultScope
        from mmengine.utils import get_installed_path
        print('mmsts at', mmsts.__file__)
        print('path', get_installed_path('mmsts'))
        cfg = Config.fromfile({child!r})
        assert cfg.model.type == 'BYOL', cfg.model
        DefaultScope.get_instance('t', scope_name='mmpretrain')
        hook = HOOKS.build(cfg.custom_hooks[0])
        print(type(hook).__name__, hook.overrides['preserve_prob'])
        """))
    site = osp.dirname(osp.dirname(python))
    assert f'mmsts at {site}' in printed, printed
    assert 'SpatialTemporalSmoothingHook 0.0' in printed, printed

    # mim: the model index, offline.
    printed = run('-m', 'mim', 'search', 'mmsts', '--local')
    assert 'byol_resnet50_sts_8xb32-coslr-200e_in1k' in printed
    assert 'fixmatch_wrn28-2_sts_1xb64-mu7-1048k_cifar10-40labels' in printed

    # mim: `mim train mmsts CONFIG` finds the installed config by its name
    # and runs the installed tools/train.py (0 epochs on a tiny folder).
    data = make_imagenet_folder(str(tmp_path / 'imagenet'), per_class=2)
    printed = run('-m', 'mim', 'train', 'mmsts', osp.basename(STS_CONFIG),
                  '-y', '--work-dir', str(work / 'run'), '--cfg-options',
                  'train_cfg.max_epochs=0', 'train_dataloader.batch_size=2',
                  'train_dataloader.num_workers=0',
                  'train_dataloader.persistent_workers=False',
                  f'train_dataloader.dataset.data_root={data}')
    installed = osp.join('mmsts', '.mim')
    assert osp.join(installed, 'configs', STS_CONFIG) in printed, printed
    assert osp.join(installed, 'tools', 'train.py') in printed, printed
    assert 'Training finished successfully' in printed, printed
