"""The ``mmsts`` scope: child registries of mmpretrain's, and the
``mmsts::`` config prefix.

mmsts registers its modules in mmpretrain's registries, so that configs
with ``default_scope='mmpretrain'`` find them. A config that inherits
``_base_ = 'mmsts::byol/...'`` tags the dicts it gets from mmsts's configs
with ``_scope_='mmsts'``; MMEngine then builds them from the registries of
the ``mmsts`` scope, defined here as empty children of mmpretrain's, which
look every name up in mmpretrain's (hence mmsts's and MMEngine's) modules.

Importing this module also lets MMEngine resolve ``mmsts::`` (its list of
known packages, ``MODULE2PACKAGE``, does not have mmsts), see
:func:`register_config_package`.
"""
import os.path as osp

import mmengine.config.config as mmengine_config
import mmpretrain.registry as mmpretrain_registry
from mmengine.config.utils import MODULE2PACKAGE
from mmengine.registry import Registry

__all__ = ['register_config_package']


def _child(parent: Registry) -> Registry:
    # `locations`: what MMEngine imports to fill the registry (all of mmsts
    # registers in mmpretrain's registries when the package is imported).
    return Registry(
        parent.name, parent=parent, scope='mmsts', locations=['mmsts'])


# One child per registry of mmpretrain, under the same name.
for _name in mmpretrain_registry.__all__:
    _parent = getattr(mmpretrain_registry, _name)
    if isinstance(_parent, Registry):
        globals()[_name] = _child(_parent)
        __all__.append(_name)


def register_config_package() -> None:
    """Let ``Config.fromfile`` resolve ``_base_ = 'mmsts::<path>'`` to
    ``<path>`` under the installed package's ``.mim/configs`` (idempotent).

    MMEngine accepts the ``package::`` prefix only for the packages listed in
    ``MODULE2PACKAGE``; mmsts adds itself when it is imported (``import
    mmsts``, or mmsts's own tools). MMEngine finds the package's files with
    ``pkg_resources``, which points an editable install (``pip install -e
    .``, PEP 660) at ``site-packages/mmsts``, where nothing is; for mmsts the
    package's directory is taken from the imported module instead.
    """
    MODULE2PACKAGE.setdefault('mmsts', 'mmsts')
    find = mmengine_config.get_installed_path
    if getattr(find, '_finds_mmsts', False):
        return

    def get_installed_path(package: str) -> str:
        if package == 'mmsts':
            return osp.dirname(osp.abspath(__file__))
        return find(package)

    get_installed_path._finds_mmsts = True
    mmengine_config.get_installed_path = get_installed_path


register_config_package()
