"""Install mmsts: ``pip install -e .`` (runtime) or ``-e .[tests]``."""
import os.path as osp

from setuptools import find_packages, setup


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
        'all': parse_requirements('mminstall') + parse_requirements('tests') +
        parse_requirements('demo'),
    },
    zip_safe=False,
)
