"""Config fixes for configs that inherit ``mmpretrain::`` bases."""
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
