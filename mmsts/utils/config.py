"""Config fixes for configs that inherit ``mmpretrain::`` bases."""
import copy
import functools

from mmengine.config import Config, ConfigDict

_DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def fix_collate_fn_scope(cfg: Config) -> Config:
    """Drop the ``_scope_`` key MMEngine adds to inherited ``collate_fn``.

    When a config inherits ``mmpretrain::...``, MMEngine tags every dict that
    has a ``type`` with ``_scope_='mmpretrain'``. The runner then calls
    ``default_collate(batch, _scope_='mmpretrain')``, which fails. Removing
    the key is safe: collate functions are looked up in the parent
    ``FUNCTIONS`` registry from any scope.

    Args:
        cfg (Config): The config, modified in place.

    Returns:
        Config: ``cfg``.
    """
    for key in _DATALOADERS:
        loader = cfg.get(key)
        if isinstance(loader, dict) and isinstance(
                loader.get('collate_fn'), (dict, ConfigDict)):
            loader['collate_fn'].pop('_scope_', None)
    return cfg


def _drop_collate_scope(dataloader):
    """``dataloader`` without ``_scope_`` in its ``collate_fn`` dict (a
    shallow copy when there was one)."""
    if not isinstance(dataloader, dict):
        return dataloader
    collate_fn = dataloader.get('collate_fn')
    if not isinstance(collate_fn, dict) or '_scope_' not in collate_fn:
        return dataloader
    dataloader = copy.copy(dataloader)
    dataloader['collate_fn'] = {
        k: v
        for k, v in collate_fn.items() if k != '_scope_'
    }
    return dataloader


def patch_runner_collate_fn_scope() -> None:
    """Let MMEngine's ``Runner`` build data loaders whose ``collate_fn``
    carries an inherited ``_scope_`` (idempotent).

    Importing mmsts calls this, so that a config that inherits an
    ``mmpretrain::`` base and adds ``custom_imports=dict(imports=['mmsts'])``
    runs unchanged under any tool (mmpretrain's ``tools/train.py``, ``mim
    train``), not only mmsts's own: ``custom_imports`` are imported when the
    config is read, before the runner builds its data loaders. The runner's
    behaviour is otherwise unchanged (see :func:`fix_collate_fn_scope`).
    """
    from mmengine.runner import Runner
    build = Runner.build_dataloader
    if getattr(build, '_drops_collate_scope', False):
        return

    @functools.wraps(build)
    def build_dataloader(dataloader, *args, **kwargs):
        return build(_drop_collate_scope(dataloader), *args, **kwargs)

    build_dataloader._drops_collate_scope = True
    Runner.build_dataloader = staticmethod(build_dataloader)
