"""tools/dataset_converters/prepare_fashion_mnist.py on fake input files laid
out as Debian's ``dataset-fashion-mnist`` installs them (gzipped idx files),
and the data set it prepares read through the Fashion-MNIST base config."""
import gzip
import importlib.util
import os.path as osp
import struct
import subprocess
import sys

import numpy as np
import pytest
from mmengine.config import Config
from mmpretrain.registry import DATASETS

from conftest import REPO_ROOT

SCRIPT = osp.join(REPO_ROOT, 'tools', 'dataset_converters',
                  'prepare_fashion_mnist.py')
CONFIG = osp.join(REPO_ROOT, 'configs', '_base_', 'datasets',
                  'fashion_mnist.py')


def _load_tool():
    spec = importlib.util.spec_from_file_location('prepare_fashion_mnist',
                                                  SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


prep = _load_tool()


def idx_bytes(array):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    return (struct.pack('>I', 0x800 + array.ndim) +
            struct.pack(f'>{array.ndim}I', *array.shape) + array.tobytes())


def make_debian_dir(root, num_train=10, num_test=4, image_size=28):
    """The four ``*.gz`` files, as in /usr/share/datasets/fashion-mnist."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    raw = {}
    for split, n in (('train', num_train), ('t10k', num_test)):
        images = rng.integers(0, 256, (n, image_size, image_size), np.uint8)
        labels = rng.integers(0, 10, n, np.uint8)
        for kind, array in (('images-idx3', images),
                            ('labels-idx1', labels)):
            name = f'{split}-{kind}-ubyte'
            raw[name] = idx_bytes(array)
            with gzip.open(root / f'{name}.gz', 'wb') as f:
                f.write(raw[name])
    return raw


def test_prepares_the_files_mmpretrain_reads(tmp_path, capsys):
    src, out = tmp_path / 'usr/share/datasets/fashion-mnist', tmp_path / 'fm'
    raw = make_debian_dir(src)
    assert prep.main(['--src', str(src), '--out', str(out),
                      '--no-install']) == 0
    for name in prep.FILES:
        assert (out / name).read_bytes() == raw[name]  # unzipped
    assert sorted(p.name for p in out.iterdir()) == sorted(prep.FILES)
    assert '10 training and 4 test images' in capsys.readouterr().out

    # mmpretrain's FashionMNIST reads them through the base config.
    cfg = Config.fromfile(CONFIG)
    train = DATASETS.build(
        dict(cfg.train_dataloader.dataset, data_root=str(out)))
    test = DATASETS.build(dict(cfg.val_dataloader.dataset, data_root=str(out)))
    assert (len(train), len(test)) == (10, 4)
    assert train[0]['inputs'].shape == (1, 28, 28)

    # A second run keeps the valid files.
    assert prep.main(['--src', str(src), '--out', str(out),
                      '--no-install']) == 0
    assert 'nothing to do' in capsys.readouterr().out


def test_missing_files_say_which_four_and_where(tmp_path, capsys):
    src, out = tmp_path / 'src', tmp_path / 'fm'
    make_debian_dir(src)
    (src / 't10k-labels-idx1-ubyte.gz').unlink()
    assert prep.main(['--src', str(src), '--out', str(out),
                      '--no-install']) == 1
    err = capsys.readouterr().err
    assert "missing ['t10k-labels-idx1-ubyte']" in err
    assert 'apt-get install dataset-fashion-mnist' in err
    for name in prep.FILES:
        assert osp.join(str(src), name + '.gz') in err
        assert osp.join(str(out), name) in err
    assert not out.exists()


def test_bad_headers_name_the_file_and_value(tmp_path, capsys):
    src, out = tmp_path / 'src', tmp_path / 'fm'
    make_debian_dir(src, image_size=32)
    assert prep.main(['--src', str(src), '--out', str(out),
                      '--no-install']) == 1
    err = capsys.readouterr().err
    assert 'train-images-idx3-ubyte.gz: images of 32 x 32 pixels' in err
    make_debian_dir(src)
    with gzip.open(src / 'train-labels-idx1-ubyte.gz', 'wb') as f:
        f.write(idx_bytes(np.zeros(3, np.uint8)))
    assert prep.main(['--src', str(src), '--out', str(out),
                      '--no-install']) == 1
    assert 'has 3 labels but' in capsys.readouterr().err


def test_installs_the_debian_package_when_root(tmp_path, monkeypatch):
    """With the files missing from the Debian folder, as root with apt, the
    script runs apt-get (here a fake that installs the files) and goes on;
    with --no-install it does not."""
    debian = tmp_path / 'debian'
    monkeypatch.setattr(prep, 'DEBIAN_DIR', str(debian))
    monkeypatch.setattr(prep.os, 'geteuid', lambda: 0)
    monkeypatch.setattr(prep.shutil, 'which', lambda name: '/usr/bin/' + name)
    calls = []

    def fake_apt(cmd, **kwargs):
        calls.append(cmd)
        make_debian_dir(debian)
        return subprocess.CompletedProcess(cmd, 0)

    out = tmp_path / 'fm'
    with pytest.raises(prep.PrepareError, match='missing'):
        prep.prepare(str(out), src=str(debian), install=False,
                     runner=fake_apt)
    assert calls == []
    counts = prep.prepare(str(out), src=str(debian), runner=fake_apt)
    assert counts == {'train': 10, 't10k': 4}
    assert calls == [[
        'apt-get', 'install', '-y', '--no-install-recommends',
        'dataset-fashion-mnist'
    ]]
    assert all((out / name).is_file() for name in prep.FILES)


def test_not_root_does_not_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prep, 'DEBIAN_DIR', str(tmp_path / 'debian'))
    monkeypatch.setattr(prep.os, 'geteuid', lambda: 1000)
    monkeypatch.setattr(prep.shutil, 'which', lambda name: '/usr/bin/' + name)

    def refuse(cmd, **kwargs):
        raise AssertionError(f'ran {cmd}')

    with pytest.raises(prep.PrepareError, match='apt-get install'):
        prep.prepare(str(tmp_path / 'fm'), src=str(tmp_path / 'debian'),
                     runner=refuse)
    assert 'Not root' in capsys.readouterr().out


def test_command_line_and_make_target(tmp_path):
    src, out = tmp_path / 'src', tmp_path / 'fm'
    make_debian_dir(src)
    # The script needs only the standard library.
    done = subprocess.run([
        sys.executable, '-S', SCRIPT, '--src',
        str(src), '--out',
        str(out), '--no-install'
    ], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / 'train-images-idx3-ubyte').is_file()
    dry = subprocess.run(['make', '-n', 'data-fashion-mnist'],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert dry.returncode == 0, dry.stderr
    assert 'tools/dataset_converters/prepare_fashion_mnist.py' in dry.stdout
    assert '--out data/fashion_mnist' in dry.stdout
