"""Extract the teacher's (or the student's) backbone from a training
checkpoint, for mmpretrain's linear-probe and fine-tuning benchmarks.

Teachers are found from the keys: every averaged model ``<name>`` (a key
``<name>.steps`` next to ``<name>.module.*``), e.g. BYOL ``target_net``,
MoCo v2 / DenseCL ``encoder_k``, MoCo v3 ``momentum_encoder``, an mmsts
FixMatch ``teacher``. Its backbone is ``<name>.module.0.*`` (a
``Sequential(backbone, neck)``) or ``<name>.module.backbone.*`` (a whole
classifier). The student's is ``backbone.*`` or ``student.backbone.*``.

The output holds ``{'state_dict': {'backbone.<key>': tensor}, 'meta': ...}``,
which the benchmark configs load as they are::

    model = dict(backbone=dict(init_cfg=dict(
        type='Pretrained', checkpoint=OUT, prefix='backbone.')))

Example::

    python tools/model_converters/extract_backbone.py \\
        work_dirs/byol_r50_sts_200e/epoch_200.pth byol_sts_teacher.pth
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

#: Where a teacher keeps its backbone, after ``<name>.``.
TEACHER_BACKBONES = ('module.0.', 'module.backbone.')
#: Where a model keeps its student's backbone.
STUDENT_BACKBONES = ('backbone.', 'student.backbone.')
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
                raise ValueError(f'teacher={teacher!r} is not an averaged '
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
        checkpoint (dict): An MMEngine checkpoint (``state_dict`` and
            ``meta``) or a bare state dict.
        source (str): ``'teacher'`` or ``'student'``. Defaults to
            ``'teacher'``, the model the paper evaluates.
        teacher (str, optional): Name of the teacher, when the model has
            several. Defaults to None.

    Returns:
        dict: ``state_dict`` (keys ``backbone.*``) and ``meta`` (plain
        Python values, so it loads with ``torch.load(weights_only=True)``).
    """
    state_dict = checkpoint.get('state_dict', checkpoint)
    prefix, name = backbone_prefix(state_dict, source, teacher)
    backbone = {
        OUT_PREFIX + k[len(prefix):]: v.detach().clone()
        for k, v in state_dict.items() if k.startswith(prefix)
    }
    meta = dict(
        source=source, source_prefix=prefix, mmsts_version=mmsts.__version__)
    if name:
        meta['teacher'] = name
        meta['teacher_steps'] = int(state_dict[f'{name}.steps'])
    old_meta = checkpoint.get('meta') or {}
    for key in ('epoch', 'iter', 'seed', 'experiment_name',
                'mmengine_version'):
        if isinstance(old_meta.get(key), (int, str)):
            meta[key] = old_meta[key]
    if isinstance(old_meta.get('sts'), dict):
        meta['sts'] = old_meta['sts']
    return dict(state_dict=backbone, meta=meta)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Extract the teacher (or student) backbone of a '
        'training checkpoint as `backbone.*` weights')
    parser.add_argument('checkpoint', help='training checkpoint')
    parser.add_argument('out', help='output file')
    parser.add_argument(
        '--source',
        choices=['teacher', 'student'],
        default='teacher',
        help='which model to extract. Defaults to the teacher, as the '
        'official STS code evaluates it')
    parser.add_argument(
        '--teacher',
        help='name of the teacher (e.g. target_net), when the model has '
        'several')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    checkpoint = CheckpointLoader.load_checkpoint(
        args.checkpoint, map_location='cpu')
    try:
        out = extract_backbone(checkpoint, args.source, args.teacher)
    except ValueError as err:
        sys.exit(f'extract_backbone.py: {args.checkpoint}: {err}')
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    torch.save(out, args.out)
    num_params = sum(v.numel() for k, v in out['state_dict'].items()
                     if v.is_floating_point())
    print_log(
        f'Saved the {args.source} backbone ({out["meta"]["source_prefix"]}*'
        f': {len(out["state_dict"])} tensors, {num_params} values) to '
        f'{args.out}; load it with init_cfg=dict(type="Pretrained", '
        f'checkpoint="{args.out}", prefix="{OUT_PREFIX}")',
        logger='current')


if __name__ == '__main__':
    main()
