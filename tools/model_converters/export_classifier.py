"""Export the teacher (or the student) of a training run as a standalone
mmpretrain ``ImageClassifier``: a checkpoint and its config, ready for
``tools/test.py``, fine-tuning or mmpretrain's
``ImageClassificationInferencer``.

``extract_backbone.py`` exports backbones (for linear probes); this tool
exports a whole classifier (backbone, neck, head and data preprocessor) from
a model that holds one, e.g. FixMatch, whose teacher
``teacher.module`` is an ``ImageClassifier`` with the architecture of the
config's ``backbone``/``neck``/``head``. ``--source`` chooses the weights:

* ``teacher`` (default): the averaged model inside the model (FixMatch
  ``teacher.module.*``); ``--teacher NAME`` picks one when there are several;
* ``student``: the live student (FixMatch ``student.*``, or the model itself
  when it is an ``ImageClassifier``);
* ``ema``: the average kept by MMEngine's ``EMAHook`` (e.g.
  ``EMAHook(ema_type='SpatialTemporalSmoothing')`` on a supervised
  classifier), from a checkpoint saved with it.

Two files are written: ``OUT`` (``.pth``) holds ``state_dict`` with the
keys of the classifier, checked here to load with ``strict=True``, and
``meta`` with the classifier's config as text (``meta['cfg']``, the key
MMEngine's runner writes, and ``meta['config']``, the key it reads when
resuming), ``dataset_meta`` (class names) when the training checkpoint had
it, and where the weights came from; the config is also written as a file
next to it, ``OUT`` with ``.py`` instead of ``.pth`` (or ``--out-config``).
It has the model, ``custom_imports`` of the training config and its test
data loader and evaluator, so that::

    from mmpretrain import ImageClassificationInferencer
    inferencer = ImageClassificationInferencer(
        model='teacher.py', pretrained='teacher.pth')
    inferencer('digit.png')

    python tools/test.py teacher.py teacher.pth

work as for any mmpretrain classifier. The tool refuses to write over the
training checkpoint or the training config.

Example::

    python tools/model_converters/export_classifier.py \\
        configs/fixmatch/fixmatch_wrn10-1_sts_1xb16-mu3-1k_digits-40labels.py \\
        work_dirs/fixmatch_digits/iter_1000.pth \\
        work_dirs/fixmatch_digits/teacher.pth --source teacher
"""
import argparse
import copy
import os
import os.path as osp
import sys
from typing import Dict, Optional, Tuple

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.registry import DefaultScope
from mmengine.runner import CheckpointLoader

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
from extract_backbone import (SOURCES, find_teachers,  # noqa: E402
                              provenance, same_file, select_weights,
                              summarize_keys)

import mmsts  # noqa: E402,F401  (registers mmsts modules, checkpoint types)

#: Data preprocessors that wrap the one of a single image batch.
WRAPPING_PREPROCESSORS = ('MultiBranchDataPreprocessor', )
#: Where a model keeps its student classifier, in the order tried.
STUDENT_PREFIXES = ('student.', '')
#: Entries of the training config copied into the classifier's config.
COPIED_ENTRIES = ('custom_imports', 'test_dataloader', 'test_evaluator',
                  'test_cfg')


def classifier_config(cfg: Config) -> Config:
    """The config of a standalone ``ImageClassifier`` with the architecture
    of a training config's model.

    Args:
        cfg (Config): The training config; its ``model`` has ``backbone``,
            ``head`` and optionally ``neck`` (an ``ImageClassifier``, a
            ``FixMatch``, ...).

    Returns:
        Config: ``default_scope``, ``model`` (``ImageClassifier`` with the
        single-batch data preprocessor: a ``MultiBranchDataPreprocessor``
        is replaced by the one it wraps) and the training config's
        ``custom_imports``, ``test_dataloader`` (``val_dataloader`` if it
        has none), ``test_evaluator`` and ``test_cfg``.

    Raises:
        ValueError: If the model has no classification head.
    """
    model = cfg.model
    missing = [key for key in ('backbone', 'head') if not model.get(key)]
    if missing:
        raise ValueError(
            f'the model of the config ({model.get("type")}) has no '
            f'{" and no ".join(missing)}, so it is not a classifier: export '
            'its backbone with tools/model_converters/extract_backbone.py')
    preprocessor = copy.deepcopy(
        model.get('data_preprocessor') or cfg.get('data_preprocessor'))
    while isinstance(preprocessor, dict) and preprocessor.get(
            'type') in WRAPPING_PREPROCESSORS:
        preprocessor = preprocessor['data_preprocessor']
    classifier = dict(
        type='ImageClassifier',
        backbone=copy.deepcopy(model.backbone),
        head=copy.deepcopy(model.head))
    if model.get('neck'):
        classifier['neck'] = copy.deepcopy(model.neck)
    if preprocessor:
        classifier['data_preprocessor'] = preprocessor
    out = dict(default_scope=cfg.get('default_scope', 'mmpretrain'))
    for key in COPIED_ENTRIES:
        if cfg.get(key) is not None:
            out[key] = copy.deepcopy(cfg[key])
    if 'test_dataloader' not in out and cfg.get('val_dataloader'):
        out['test_dataloader'] = copy.deepcopy(cfg.val_dataloader)
        if cfg.get('val_evaluator') and 'test_evaluator' not in out:
            out['test_evaluator'] = copy.deepcopy(cfg.val_evaluator)
    if 'test_dataloader' in out:
        out.setdefault('test_cfg', dict())
    out['model'] = classifier
    return Config(out)


def source_prefix(state_dict: Dict[str, torch.Tensor], source: str,
                  teacher: Optional[str] = None) -> Tuple[str, str]:
    """The key prefix of the classifier to export.

    Args:
        state_dict (dict): The (live or averaged) model's state dict.
        source (str): ``'teacher'``, ``'student'`` or ``'ema'``.
        teacher (str, optional): The teacher's name, when there are several.

    Returns:
        tuple[str, str]: The prefix (e.g. ``'teacher.module.'``) and the
        teacher's name (``''`` otherwise).

    Raises:
        ValueError: If there is no such classifier.
    """
    if source != 'teacher':
        for prefix in STUDENT_PREFIXES:
            if any(k.startswith(f'{prefix}head.') for k in state_dict):
                return prefix, ''
        wanted = [f'{p}head.*' for p in STUDENT_PREFIXES]
        raise ValueError(
            f'no {source} classifier (keys {wanted}) in the checkpoint; its '
            f'keys are {summarize_keys(state_dict)}')
    teachers = find_teachers(state_dict)
    if teacher is not None:
        if teacher not in teachers:
            raise ValueError(f'--teacher {teacher} is not an averaged model '
                             f'of the checkpoint; found {teachers}')
        name = teacher
    elif len(teachers) == 1:
        name = teachers[0]
    elif not teachers:
        raise ValueError(
            'no teacher (averaged model: `<name>.steps` with '
            '`<name>.module.*` keys) in the checkpoint; its keys are '
            f'{summarize_keys(state_dict)}. Use --source student (or '
            '--source ema for a checkpoint saved with EMAHook)')
    else:
        raise ValueError(f'the checkpoint has several teachers {teachers}: '
                         'choose one with --teacher')
    prefix = f'{name}.module.'
    if not any(k.startswith(f'{prefix}head.') for k in state_dict):
        raise ValueError(
            f'the teacher {name} is not a whole classifier (no '
            f'`{prefix}head.*` keys; its keys are '
            f'{summarize_keys(state_dict, depth=3)}): export its backbone '
            'with tools/model_converters/extract_backbone.py')
    return prefix, name


def export_classifier(cfg: Config,
                      checkpoint: dict,
                      source: str = 'teacher',
                      teacher: Optional[str] = None) -> Tuple[dict, Config]:
    """Make a standalone ``ImageClassifier`` checkpoint and config.

    Args:
        cfg (Config): The training config.
        checkpoint (dict): The training checkpoint (``state_dict``,
            ``ema_state_dict`` when saved with ``EMAHook``, ``meta``).
        source (str): ``'teacher'``, ``'student'`` or ``'ema'``. Defaults to
            ``'teacher'``.
        teacher (str, optional): Name of the teacher, when the model has
            several; only with ``source='teacher'``. Defaults to None.

    Returns:
        tuple[dict, Config]: The checkpoint (``state_dict`` with the
        classifier's keys, strict-loadable, and ``meta``) and the
        classifier's config.

    Raises:
        ValueError: If the checkpoint has no such classifier, its weights do
            not fit the config's architecture, or the options do not fit
            together.
    """
    classifier_cfg = classifier_config(cfg)
    state_dict, entry, _, ema_steps = select_weights(checkpoint, source,
                                                     teacher)
    prefix, name = source_prefix(state_dict, source, teacher)

    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(copy.deepcopy(classifier_cfg.model))
    expected = model.state_dict()
    missing = [k for k in expected if prefix + k not in state_dict]
    if missing:
        raise ValueError(
            f'the {source} weights (`{prefix}*`) do not fit the config\'s '
            f'classifier: {len(missing)} keys missing, e.g. '
            f'{[prefix + k for k in missing[:5]]}')
    weights = {
        k: state_dict[prefix + k].detach().clone()
        for k in expected
    }
    try:  # the guarantee: the checkpoint loads strictly
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise ValueError(f'the {source} weights (`{prefix}*`) do not load '
                         f'into the config\'s classifier: {err}') from None

    text = classifier_cfg.pretty_text
    meta = dict(
        cfg=text,
        config=text,
        **provenance(checkpoint, state_dict, source, prefix, entry, name,
                     ema_steps))
    dataset_meta = (checkpoint.get('meta') or {}).get('dataset_meta')
    if isinstance(dataset_meta, dict) and dataset_meta.get('classes'):
        meta['dataset_meta'] = dict(classes=list(dataset_meta['classes']))
    return dict(state_dict=weights, meta=meta), classifier_cfg


def default_config_path(out: str) -> str:
    """``OUT`` with ``.py`` instead of its extension."""
    return osp.splitext(out)[0] + '.py'


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Export the teacher, the student or EMAHook\'s average '
        'of a training run as a standalone mmpretrain ImageClassifier '
        '(checkpoint + config)')
    parser.add_argument('config', help='training config')
    parser.add_argument('checkpoint', help='training checkpoint')
    parser.add_argument(
        'out', help='output checkpoint; must not be the training checkpoint')
    parser.add_argument(
        '--source',
        choices=SOURCES,
        default='teacher',
        help='which weights: `teacher`, the averaged model inside the model '
        '(FixMatch teacher; default); `student`, the live model; `ema`, '
        "the average kept by MMEngine's EMAHook")
    parser.add_argument(
        '--teacher',
        help='name of the teacher, when the model has several; with '
        '--source teacher only')
    parser.add_argument(
        '--out-config',
        help='where to write the classifier\'s config (default: OUT with '
        '.py instead of its extension)')
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    out_config = args.out_config or default_config_path(args.out)
    for path, what in ((args.out, 'out'), (out_config, 'the output config')):
        for given, name in ((args.checkpoint, 'the training checkpoint'),
                            (args.config, 'the training config')):
            if same_file(given, path):
                sys.exit(f'export_classifier.py: {what} {path} is {name} '
                         f'{given}; writing it would overwrite it: choose '
                         'another output file')
    if same_file(args.out, out_config):
        sys.exit(f'export_classifier.py: out and the output config are the '
                 f'same file {args.out}: give OUT a .pth extension or set '
                 '--out-config')
    cfg = Config.fromfile(args.config)
    checkpoint = CheckpointLoader.load_checkpoint(
        args.checkpoint, map_location='cpu')
    try:
        out, classifier_cfg = export_classifier(cfg, checkpoint, args.source,
                                                args.teacher)
    except ValueError as err:
        sys.exit(f'export_classifier.py: {args.checkpoint}: {err}')
    for path in (args.out, out_config):
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    torch.save(out, args.out)
    with open(out_config, 'w', encoding='utf-8') as f:
        f.write(out['meta']['cfg'])
    meta = out['meta']
    what = dict(
        teacher=f'teacher {meta.get("teacher")}',
        student='student',
        ema="EMAHook's average")[args.source]
    print_log(
        f'Saved the {what} ({meta["source_prefix"]}*: '
        f'{len(out["state_dict"])} tensors) as an ImageClassifier to '
        f'{args.out}, its config to {out_config}; e.g. '
        f'ImageClassificationInferencer(model="{out_config}", '
        f'pretrained="{args.out}")',
        logger='current')


if __name__ == '__main__':
    main()
