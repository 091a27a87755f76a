"""Extract a backbone from a training checkpoint, for mmpretrain's
linear-probe and fine-tuning benchmarks.

``--source`` chooses the model:

* ``teacher`` (default): the momentum teacher inside the model, the one the
  STS hook smooths. Teachers are found from the keys: every averaged model
  ``<name>`` (a key ``<name>.steps`` next to ``<name>.module.*``), e.g. BYOL
  ``target_net``, MoCo v2 / DenseCL ``encoder_k``, MoCo v3
  ``momentum_encoder``, an mmsts FixMatch ``teacher``. Its backbone is
  ``<name>.module.0.*`` (a ``Sequential(backbone, neck)``) or
  ``<name>.module.backbone.*`` (a whole classifier).
* ``student``: the trained (online / query) network, ``backbone.*`` or
  ``student.backbone.*``.
* ``ema``: the average of the whole model kept by MMEngine's ``EMAHook``
  (e.g. ``EMAHook(ema_type='SpatialTemporalSmoothing')`` on a supervised
  classifier: there, this average is the STS teacher), the backbone of the
  averaged student.

A checkpoint saved with ``EMAHook`` holds two copies of the model, swapped by
``EMAHook.before_save_checkpoint`` so that the checkpoint deploys the
average: ``state_dict`` holds the *averaged* weights, and ``ema_state_dict``
(keys ``module.<model key>`` and ``steps``) the *live* ones. ``student`` and
``teacher`` are read from the live weights, ``ema`` from the average; a
checkpoint without ``ema_state_dict`` holds the live weights only.

The output holds ``{'state_dict': {'backbone.<key>': tensor}, 'meta': ...}``,
which the benchmark configs load as they are::

    model = dict(backbone=dict(init_cfg=dict(
        type='Pretrained', checkpoint=OUT, prefix='backbone.')))

Example::

    python tools/model_converters/extract_backbone.py \\
        work_dirs/byol_resnet50_sts_8xb32-coslr-200e_in1k/epoch_200.pth \\
        byol_sts_teacher.pth
"""
import argparse
import os
import os.path as osp
import sys
from collections import Counter
from typing import Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log
from mmengine.runner import CheckpointLoader

import mmsts  # noqa: F401  (allow-lists MMEngine checkpoint types)
from mmsts.models import sts_records

#: The models ``--source`` can name.
SOURCES = ('teacher', 'student', 'ema')
#: Where a teacher keeps its backbone, after ``<name>.``.
TEACHER_BACKBONES = ('module.0.', 'module.backbone.')
#: Where a model keeps its student's backbone.
STUDENT_BACKBONES = ('backbone.', 'student.backbone.')
#: Key prefix of the model's weights in EMAHook's ``ema_state_dict``.
EMA_PREFIX = 'module.'
OUT_PREFIX = 'backbone.'


def find_teachers(state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the averaged models in a state dict.

    Args:
        state_dict (dict): A model's state dict.

    Returns:
        list[str]: Every ``name`` with keys ``name.steps`` and
        ``name.module.*``, outermost first.
    """
    names = [k[:-len('.steps')] for k in state_dict if k.endswith('.steps')]
    found = [
        name for name in names if any(
            k.startswith(f'{name}.module.') for k in state_dict)
    ]
    # An averaged model nested in another one is part of the outer one.
    return sorted((n for n in found
                   if not any(n.startswith(f'{o}.') for o in found if o != n)),
                  key=lambda n: (n.count('.'), n))


def summarize_keys(state_dict: Dict[str, torch.Tensor],
                   depth: int = 2,
                   limit: int = 12) -> str:
    """A short description of a state dict's keys for error messages.

    Args:
        state_dict (dict): A model's state dict.
        depth (int): Number of dotted components to group keys by.
        limit (int): Most groups to list.
    """
    groups = Counter('.'.join(k.split('.')[:depth]) for k in state_dict)
    listed = ', '.join(f'{g}.* ({n})'
                       for g, n in sorted(groups.items())[:limit])
    more = len(groups) - limit
    return listed + (f', ... ({more} more groups)' if more > 0 else '')


def split_ema(
    checkpoint: dict
) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, torch.Tensor]],
           Optional[int]]:
    """The live and the EMAHook-averaged model weights of a checkpoint.

    ``EMAHook.before_save_checkpoint`` stores the average of the model in
    ``state_dict`` and the live weights in ``ema_state_dict`` under
    ``module.<key>``; this undoes the swap.

    Args:
        checkpoint (dict): An MMEngine checkpoint or a bare state dict.

    Returns:
        tuple: The live model's state dict; the averaged model's (None when
        the checkpoint has no ``ema_state_dict``); EMAHook's update count
        (None likewise).
    """
    if 'state_dict' not in checkpoint:  # a bare state dict
        return checkpoint, None, None
    state_dict = checkpoint['state_dict']
    ema_state = checkpoint.get('ema_state_dict')
    if not ema_state:
        return state_dict, None, None
    live = dict(state_dict)
    for key, value in ema_state.items():
        if key.startswith(EMA_PREFIX):
            live[key[len(EMA_PREFIX):]] = value
    steps = ema_state.get('steps')
    return live, state_dict, None if steps is None else int(steps)


def select_weights(checkpoint: dict, source: str,
                   teacher: Optional[str] = None
                   ) -> Tuple[Dict[str, torch.Tensor], str, Optional[dict],
                              Optional[int]]:
    """Check ``--source``/``--teacher`` and pick the state dict to read.

    Args:
        checkpoint (dict): An MMEngine checkpoint or a bare state dict.
        source (str): One of :data:`SOURCES`.
        teacher (str, optional): The ``--teacher`` option.

    Returns:
        tuple: The state dict holding ``source`` (EMAHook's average for
        ``'ema'``, else the live model); the checkpoint entry it came from;
        the averaged model's state dict (None without ``ema_state_dict``);
        EMAHook's update count (None likewise).
    """
    if source not in SOURCES:
        raise ValueError(f'--source must be one of {SOURCES}, but got '
                         f'{source!r}')
    if teacher is not None and source != 'teacher':
        raise ValueError(f'--teacher {teacher} chooses a teacher, so it '
                         f'needs --source teacher, but got --source {source}')
    live, averaged, ema_steps = split_ema(checkpoint)
    if source == 'ema':
        if averaged is None:
            raise ValueError(
                '--source ema: the checkpoint has no `ema_state_dict`, so '
                'it was not saved by a run with EMAHook; use --source '
                'teacher or --source student')
        return averaged, 'state_dict', averaged, ema_steps
    entry = 'state_dict' if averaged is None else 'ema_state_dict'
    return live, entry, averaged, ema_steps


def provenance(checkpoint: dict, state_dict: Dict[str, torch.Tensor],
               source: str, prefix: str, entry: str, name: Optional[str],
               ema_steps: Optional[int]) -> dict:
    """The ``meta`` of an exported checkpoint: where its weights came from
    (plain Python values, so it loads with ``weights_only=True``).

    Args:
        checkpoint (dict): The training checkpoint.
        state_dict (dict): The state dict the weights were read from.
        source (str): ``--source``.
        prefix (str): The prefix of the weights' keys in ``state_dict``.
        entry (str): The checkpoint entry ``state_dict`` came from.
        name (str, optional): The teacher read, if any.
        ema_steps (int, optional): EMAHook's update count, if any.
    """
    meta = dict(
        source=source,
        source_prefix=prefix,
        checkpoint_entry=entry,
        mmsts_version=mmsts.__version__)
    if name:
        meta['teacher'] = name
        meta['teacher_steps'] = int(state_dict[f'{name}.steps'])
    if source == 'ema' and ema_steps is not None:
        meta['ema_steps'] = ema_steps
    old_meta = checkpoint.get('meta') or {}
    for key in ('epoch', 'iter', 'seed', 'experiment_name',
                'mmengine_version'):
        if isinstance(old_meta.get(key), (int, str)):
            meta[key] = old_meta[key]
    records = sts_records(checkpoint)
    if records:  # the STS teachers' settings and their history
        meta['sts'] = records
    return meta


def backbone_prefix(state_dict: Dict[str, torch.Tensor],
                    source: str = 'teacher',
                    teacher: Optional[str] = None) -> Tuple[str, str]:
    """Find the key prefix of the teacher's or the student's backbone.

    Args:
        state_dict (dict): A model's state dict.
        source (str): ``'teacher'`` or ``'student'``.
        teacher (str, optional): Name of the teacher, when the model has
            several. None finds the only one.

    Returns:
        tuple[str, str]: The prefix (e.g. ``'target_net.module.0.'``) and
        the teacher's name (``''`` for the student).

    Raises:
        ValueError: If there is no such backbone, or several teachers and
            ``teacher`` is None.
    """
    if source == 'student':
        candidates, name = STUDENT_BACKBONES, ''
    elif source == 'teacher':
        teachers = find_teachers(state_dict)
        if teacher is not None:
            if teacher not in teachers:
                raise ValueError(f'--teacher {teacher} is not an averaged '
                                 f'model of the checkpoint; found {teachers}')
            name = teacher
        elif len(teachers) == 1:
            name = teachers[0]
        elif not teachers:
            raise ValueError(
                'no teacher (averaged model: `<name>.steps` with '
                f'`<name>.module.*` keys) in the checkpoint; its keys are '
                f'{summarize_keys(state_dict)}')
        else:
            raise ValueError(f'the checkpoint has several teachers '
                             f'{teachers}: choose one with --teacher')
        candidates = tuple(f'{name}.{p}' for p in TEACHER_BACKBONES)
    else:
        raise ValueError(
            f"source must be 'teacher' or 'student', but got {source!r}")
    for prefix in candidates:
        if any(k.startswith(prefix) for k in state_dict):
            return prefix, name
    raise ValueError(f'no {source} backbone (keys {list(candidates)}) in '
                     f'the checkpoint; its keys are '
                     f'{summarize_keys(state_dict, depth=3 if name else 2)}')


def extract_backbone(checkpoint: dict,
                     source: str = 'teacher',
                     teacher: Optional[str] = None) -> dict:
    """Make a backbone checkpoint from a training checkpoint.

    Args:
        checkpoint (dict): An MMEngine checkpoint (``state_dict``, and
            ``ema_state_dict`` when saved with ``EMAHook``, and ``meta``) or
            a bare state dict.
        source (str): ``'teacher'`` (the momentum teacher inside the model),
            ``'student'`` (the live student) or ``'ema'`` (EMAHook's
            average of the student). Defaults to ``'teacher'``, the model
            the paper evaluates.
        teacher (str, optional): Name of the teacher, when the model has
            several; only with ``source='teacher'``. Defaults to None.

    Returns:
        dict: ``state_dict`` (keys ``backbone.*``) and ``meta`` (plain
        Python values, so it loads with ``torch.load(weights_only=True)``).

    Raises:
        ValueError: If the checkpoint has no such backbone, or the options
            do not fit together.
    """
    state_dict, entry, averaged, ema_steps = select_weights(
        checkpoint, source, teacher)
    if source == 'ema':
        prefix, name = backbone_prefix(averaged, 'student')
    else:
        if (source == 'teacher' and averaged is not None
                and not find_teachers(state_dict)):
            raise ValueError(
                'no teacher (averaged model: `<name>.steps` with '
                '`<name>.module.*` keys) in the model, but the checkpoint '
                "holds EMAHook's average of the whole model "
                f'(`ema_state_dict`, {ema_steps} updates): extract that '
                'with --source ema; the model\'s keys are '
                f'{summarize_keys(state_dict)}')
        prefix, name = backbone_prefix(state_dict, source, teacher)
    backbone = {
        OUT_PREFIX + k[len(prefix):]: v.detach().clone()
        for k, v in state_dict.items() if k.startswith(prefix)
    }
    meta = provenance(checkpoint, state_dict, source, prefix, entry, name,
                      ema_steps)
    return dict(state_dict=backbone, meta=meta)


def same_file(path: str, other: str) -> bool:
    """Whether two paths name the same file, through ``./``, ``..``,
    symbolic links or hard links.

    Args:
        path (str): A path.
        other (str): Another path; it need not exist.
    """
    if osp.exists(path) and osp.exists(other):
        return osp.samefile(path, other)
    return osp.realpath(path) == osp.realpath(other)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Extract the backbone of the teacher, the student or '
        "EMAHook's average from a training checkpoint, as `backbone.*` "
        'weights')
    parser.add_argument('checkpoint', help='training checkpoint')
    parser.add_argument(
        'out', help='output file; must not be the training checkpoint')
    parser.add_argument(
        '--source',
        choices=SOURCES,
        default='teacher',
        help='which model to extract: `teacher`, the momentum teacher '
        'inside the model (BYOL target_net, MoCo encoder_k, FixMatch '
        'teacher; what the STS hook smooths; default, as the official STS '
        'code evaluates it); `student`, the live trained network; `ema`, '
        "the average of the model kept by MMEngine's EMAHook (the STS "
        "teacher of `EMAHook(ema_type='SpatialTemporalSmoothing')`)")
    parser.add_argument(
        '--teacher',
        help='name of the teacher (e.g. target_net), when the model has '
        'several; with --source teacher only')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if same_file(args.checkpoint, args.out):
        sys.exit(f'extract_backbone.py: out {args.out} is the input '
                 f'checkpoint {args.checkpoint}; writing it would overwrite '
                 'the training checkpoint: choose another output file')
    checkpoint = CheckpointLoader.load_checkpoint(
        args.checkpoint, map_location='cpu')
    try:
        out = extract_backbone(checkpoint, args.source, args.teacher)
    except ValueError as err:
        sys.exit(f'extract_backbone.py: {args.checkpoint}: {err}')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    torch.save(out, args.out)
    meta = out['meta']
    num_params = sum(v.numel() for k, v in out['state_dict'].items()
                     if v.is_floating_point())
    what = dict(
        teacher=f'teacher {meta.get("teacher")}',
        student='student',
        ema="EMAHook's average")[args.source]
    keys = meta['source_prefix'] + '*'
    if meta['checkpoint_entry'] == 'ema_state_dict':
        keys = EMA_PREFIX + keys
    print_log(
        f'Saved the backbone of the {what} ({meta["checkpoint_entry"]} '
        f'{keys}: {len(out["state_dict"])} tensors, '
        f'{num_params} values) to {args.out}; load it with '
        f'init_cfg=dict(type="Pretrained", checkpoint="{args.out}", '
        f'prefix="{OUT_PREFIX}")',
        logger='current')


if __name__ == '__main__':
    main()
