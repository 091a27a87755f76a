"""Install mmsts: ``pip install -e .`` (runtime) or ``-e .[tests]``."""
import os
import os.path as osp
import platform
import shutil
import sys
import warnings

from setuptools import find_packages, setup

#: What ``mim`` and MMEngine's ``mmsts::`` prefix look for in ``mmsts/.mim``.
MIM_FILES = ('configs', 'tools', 'model-index.yml')


def readme():
    with open(osp.join(osp.dirname(__file__), 'README.md'),
              encoding='utf-8') as f:
        return f.read()


def get_version():
    scope = {}
    with open(osp.join(osp.dirname(__file__), 'mmsts', 'version.py')) as f:
        exec(compile(f.read(), 'version.py', 'exec'), scope)
    return scope['__version__']


def parse_requirements(name):
    """Requirement lines of ``requirements/<name>.txt``."""
    path = osp.join(osp.dirname(__file__), 'requirements', f'{name}.txt')
    with open(path) as f:
        lines = (line.split('#')[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith('-')]


def add_mim_extension():
    """Put the configs, tools and model index in ``mmsts/.mim``, as every
    OpenMMLab package does, for ``mim train mmsts CONFIG`` and
    ``_base_ = 'mmsts::byol/...'``.

    An editable install (``pip install -e .``: ``develop``, or PEP 660's
    ``editable_wheel``) links them, so that edits show at once; building a
    wheel or a source distribution copies them (``MANIFEST.in`` lists them).
    """
    if 'develop' in sys.argv or 'editable_wheel' in sys.argv:
        # Windows may not allow symlinks.
        mode = 'copy' if platform.system() == 'Windows' else 'symlink'
    elif any(cmd in sys.argv for cmd in ('sdist', 'bdist_wheel', 'build',
                                         'build_py', 'install')):
        mode = 'copy'
    else:
        return

    repo_path = osp.dirname(osp.abspath(__file__))
    mim_path = osp.join(repo_path, 'mmsts', '.mim')
    os.makedirs(mim_path, exist_ok=True)
    for filename in MIM_FILES:
        src_path = osp.join(repo_path, filename)
        tar_path = osp.join(mim_path, filename)
        if not osp.exists(src_path):
            warnings.warn(f'{src_path} is missing: not added to mmsts/.mim')
            continue
        if osp.islink(tar_path) or osp.isfile(tar_path):
            os.remove(tar_path)
        elif osp.isdir(tar_path):
            shutil.rmtree(tar_path)
        if mode == 'symlink':
            os.symlink(osp.relpath(src_path, mim_path), tar_path)
        elif osp.isfile(src_path):
            shutil.copyfile(src_path, tar_path)
        else:
            shutil.copytree(
                src_path,
                tar_path,
                ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


add_mim_extension()

setup(
    name='mmsts',
    version=get_version(),
    description='Spatial-Temporal Smoothing (Spatial Ensemble, NeurIPS 2021) '
    'teachers for MMEngine and mmpretrain',
    long_description=readme(),
    long_description_content_type='text/markdown',
    license='Apache License 2.0',
    packages=find_packages(exclude=('configs', 'tools', 'tests', 'docs')),
    python_requires='>=3.8',
    # mmcv is deliberately not a hard requirement: mmpretrain needs either
    # the full mmcv or mmcv-lite, and pip must never replace a user's full
    # (compiled) mmcv with the lite build. See requirements/mminstall.txt.
    install_requires=parse_requirements('runtime'),
    extras_require={
        'mmcv-lite': parse_requirements('mminstall'),
        'tests': parse_requirements('tests'),
        'demo': parse_requirements('demo'),
        'tensorboard': parse_requirements('tensorboard'),
        'all': parse_requirements('mminstall') + parse_requirements('tests') +
        parse_requirements('demo'),
    },
    # mmsts/.mim: the configs, tools and model index (MANIFEST.in).
    include_package_data=True,
    zip_safe=False,
)
