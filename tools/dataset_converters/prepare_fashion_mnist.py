"""Prepare Fashion-MNIST for mmpretrain's ``FashionMNIST`` data set.

mmpretrain reads the four unzipped idx files from its ``data_root``
(``data/fashion_mnist`` in ``configs/_base_/datasets/fashion_mnist.py``)::

    train-images-idx3-ubyte  train-labels-idx1-ubyte
    t10k-images-idx3-ubyte   t10k-labels-idx1-ubyte

This script takes them from Debian's ``dataset-fashion-mnist`` package,
which installs the gzipped files in ``/usr/share/datasets/fashion-mnist``.
If they are missing there, it installs the package with ``apt-get`` when it
runs as root on a machine with apt (``--no-install`` to never do so), and
otherwise says exactly which files to put where. It checks each file's idx
header (magic number, 28 x 28 images, as many labels as images) and writes
the unzipped copies atomically; files already in place and valid are kept.
Only the Python standard library is used.

Example::

    python tools/dataset_converters/prepare_fashion_mnist.py \\
        --out data/fashion_mnist
"""
import argparse
import gzip
import os
import os.path as osp
import shutil
import struct
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

#: Where Debian's ``dataset-fashion-mnist`` installs the gzipped files.
DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
DEBIAN_PACKAGE = 'dataset-fashion-mnist'
#: The unzipped files mmpretrain's ``FashionMNIST`` reads, in order.
FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
         't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
#: idx magic numbers: unsigned bytes, 3 dimensions (images) or 1 (labels).
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
IMAGE_SIZE = 28


class PrepareError(Exception):
    """A problem the user has to fix; the message says how."""


def missing_files_message(src: str, out: str) -> str:
    """What to put where when the files cannot be found.

    Args:
        src (str): Where the gzipped files were looked for.
        out (str): Where the unzipped files go.
    """
    lines = [
        f'Fashion-MNIST not found: {src!r} lacks some of the four files. '
        'Either',
        f'  - install Debian\'s package: apt-get install {DEBIAN_PACKAGE} '
        f'(as root), which puts them in {DEBIAN_DIR}, and run this again; or',
        f'  - put the four gzipped files in {src} (or another folder given '
        'with --src) and run this again:',
    ]
    lines += [f'      {osp.join(src, name + ".gz")}' for name in FILES]
    lines.append(
        f'  - or put the four unzipped files directly in {out} (the '
        '`data_root` of configs/_base_/datasets/fashion_mnist.py):')
    lines += [f'      {osp.join(out, name)}' for name in FILES]
    return '\n'.join(lines)


def find_sources(src: str) -> Dict[str, str]:
    """The path of each file in ``src``, gzipped (``NAME.gz``) or not.

    Args:
        src (str): A folder.

    Returns:
        dict[str, str]: File name in :data:`FILES` -> path, for those found.
    """
    found = {}
    for name in FILES:
        for candidate in (name + '.gz', name):
            path = osp.join(src, candidate)
            if osp.isfile(path):
                found[name] = path
                break
    return found


def read_header(path: str) -> Tuple[int, ...]:
    """The magic number and dimensions of an idx file (gzipped or not).

    Args:
        path (str): An idx file; ``.gz`` files are read through gzip.

    Returns:
        tuple[int, ...]: ``(magic, *dims)``.
    """
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            head = f.read(4)
            if len(head) < 4:
                raise PrepareError(f'{path}: too short for an idx file')
            (magic, ) = struct.unpack('>I', head)
            ndim = magic & 0xFF
            dims = f.read(4 * ndim)
    except (OSError, EOFError) as err:  # e.g. a corrupt gzip stream
        raise PrepareError(f'{path}: cannot be read: {err}') from None
    if len(dims) < 4 * ndim:
        raise PrepareError(f'{path}: truncated idx header')
    return (magic, ) + struct.unpack(f'>{ndim}I', dims)


def check_headers(paths: Dict[str, str]) -> Dict[str, int]:
    """Check the idx headers of the four files.

    Args:
        paths (dict[str, str]): File name in :data:`FILES` -> path.

    Returns:
        dict[str, int]: ``'train'`` and ``'t10k'`` -> number of images.

    Raises:
        PrepareError: Naming the file and the value that is wrong.
    """
    counts = {}
    for split in ('train', 't10k'):
        images = f'{split}-images-idx3-ubyte'
        labels = f'{split}-labels-idx1-ubyte'
        head = read_header(paths[images])
        if head[0] != IMAGES_MAGIC or len(head) != 4:
            raise PrepareError(
                f'{paths[images]}: idx magic number {head[0]:#010x}, '
                f'expected {IMAGES_MAGIC:#010x} (uint8 images, 3 dims)')
        if head[2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise PrepareError(
                f'{paths[images]}: images of {head[2]} x {head[3]} pixels, '
                f'expected {IMAGE_SIZE} x {IMAGE_SIZE}')
        label_head = read_header(paths[labels])
        if label_head[0] != LABELS_MAGIC or len(label_head) != 2:
            raise PrepareError(
                f'{paths[labels]}: idx magic number {label_head[0]:#010x}, '
                f'expected {LABELS_MAGIC:#010x} (uint8 labels, 1 dim)')
        if label_head[1] != head[1]:
            raise PrepareError(
                f'{paths[labels]} has {label_head[1]} labels but '
                f'{paths[images]} has {head[1]} images')
        counts[split] = head[1]
    return counts


def install_package(runner=subprocess.run) -> bool:
    """Install :data:`DEBIAN_PACKAGE` with apt-get, if root and available.

    Args:
        runner (callable): ``subprocess.run`` (replaced in tests).

    Returns:
        bool: Whether an installation was attempted and succeeded.
    """
    if shutil.which('apt-get') is None:
        print(f'apt-get is not available: cannot install {DEBIAN_PACKAGE}.')
        return False
    if not hasattr(os, 'geteuid') or os.geteuid() != 0:
        print(f'Not root: not installing {DEBIAN_PACKAGE} with apt-get.')
        return False
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    install = ['apt-get', 'install', '-y', '--no-install-recommends',
               DEBIAN_PACKAGE]
    print('Running: ' + ' '.join(install))
    if runner(install, env=env).returncode == 0:
        return True
    # A fresh machine may have no package lists yet.
    print('Running: apt-get update')
    if runner(['apt-get', 'update'], env=env).returncode != 0:
        return False
    return runner(install, env=env).returncode == 0


def unpack(src_path: str, dst_path: str) -> None:
    """Write ``src_path`` (gzipped or not) unzipped to ``dst_path``,
    through a temporary file, so a failure leaves no partial file."""
    opener = gzip.open if src_path.endswith('.gz') else open
    tmp = dst_path + '.part'
    try:
        with opener(src_path, 'rb') as fin, open(tmp, 'wb') as fout:
            shutil.copyfileobj(fin, fout, length=1 << 20)
        os.replace(tmp, dst_path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def prepare(out: str,
            src: str = DEBIAN_DIR,
            install: bool = True,
            force: bool = False,
            runner=subprocess.run) -> Dict[str, int]:
    """Write the four unzipped Fashion-MNIST files to ``out``.

    Args:
        out (str): The ``data_root`` to fill.
        src (str): Folder of the (gzipped) files. Defaults to Debian's
            :data:`DEBIAN_DIR`.
        install (bool): Install :data:`DEBIAN_PACKAGE` with apt-get when
            files are missing in ``src``, if root. Defaults to True.
        force (bool): Rewrite files already in ``out``. Defaults to False.
        runner (callable): Runs apt-get; ``subprocess.run``.

    Returns:
        dict[str, int]: ``'train'`` and ``'t10k'`` -> number of images.

    Raises:
        PrepareError: If files are missing (the message lists the four
            files and where to put them) or malformed.
    """
    ready = {name: osp.join(out, name) for name in FILES}
    if not force and all(osp.isfile(p) for p in ready.values()):
        try:
            counts = check_headers(ready)
        except PrepareError as err:
            print(f'Rewriting {out}: {err}')
        else:
            print(f'{out} already holds the four files; nothing to do '
                  '(--force rewrites them).')
            return counts
    sources = find_sources(src)
    if len(sources) < len(FILES) and install and \
            osp.abspath(src) == osp.abspath(DEBIAN_DIR):
        if install_package(runner):
            sources = find_sources(src)
    if len(sources) < len(FILES):
        missing = [n for n in FILES if n not in sources]
        raise PrepareError(f'missing {missing}.\n' +
                           missing_files_message(src, out))
    counts = check_headers(sources)
    os.makedirs(out, exist_ok=True)
    for name in FILES:
        unpack(sources[name], ready[name])
        print(f'{sources[name]} -> {ready[name]}')
    check_headers(ready)
    return counts


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Write the four unzipped Fashion-MNIST idx files that '
        "mmpretrain's FashionMNIST reads, from Debian's "
        f'{DEBIAN_PACKAGE} package')
    parser.add_argument(
        '--out',
        default='data/fashion_mnist',
        help='data_root to fill (default: %(default)s)')
    parser.add_argument(
        '--src',
        default=DEBIAN_DIR,
        help='folder of the gzipped (or unzipped) files (default: '
        "%(default)s, where Debian's package installs them)")
    parser.add_argument(
        '--no-install',
        action='store_true',
        help=f'never run apt-get to install {DEBIAN_PACKAGE}')
    parser.add_argument(
        '--force', action='store_true', help='rewrite files already there')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        counts = prepare(
            args.out,
            src=args.src,
            install=not args.no_install,
            force=args.force)
    except PrepareError as err:
        print(f'prepare_fashion_mnist.py: {err}', file=sys.stderr)
        return 1
    print(f'Fashion-MNIST ready in {args.out}: {counts["train"]} training '
          f'and {counts["t10k"]} test images.')
    if counts != {'train': 60000, 't10k': 10000}:
        print('Note: the real Fashion-MNIST has 60000 training and 10000 '
              'test images.')
    return 0


if __name__ == '__main__':
    sys.exit(main())
