"""Noisy Student training (Xie et al., CVPR 2020), N rounds from one config.

Round 0 trains the teacher on the labeled images
(``noisy_student.teacher_config``). Round ``r >= 1``:

1. the teacher of round ``r - 1`` (the weights of its last checkpoint: with
   an ``EMAHook`` in the config, MMEngine saves the *smoothed* model there,
   so the STS or EMA average of the student is what becomes the teacher)
   pseudo-labels the config's ``unlabeled_dataset`` without noise
   (``tools/pseudo_label.py``: confidence threshold, class balancing);
2. the student (this config: noise from RandAugment, dropout and
   stochastic depth; a ``PseudoLabeledDataset`` reading the file as the
   second data set of its training set) is trained on labeled +
   pseudo-labeled images.

With ``--teacher-checkpoint``, round 0 is not trained: the given
checkpoint (of a ``noisy_student.teacher_config`` model, e.g. a released
one, or a teacher shared by several runs) is round 0's teacher.

Everything lands in ``--work-dir``: ``round<r>/`` holds a round's training
(``pseudo_labels.npz`` too) and ``round<r>/done.json`` marks it finished.
Run the same command again after a crash: finished rounds are skipped and
the interrupted training resumes from its last checkpoint.

Example::

    python tools/noisy_student.py \\
        configs/noisy_student/noisy-student_wrn10-1_sts_fashion-mnist.py \\
        --work-dir work_dirs/noisy_student --cfg-options randomness.seed=1
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
from typing import Callable, Dict, List, Optional

from mmengine.config import Config

TOOLS = osp.dirname(osp.abspath(__file__))
sys.path.insert(0, osp.dirname(TOOLS))

from mmsts.datasets import check_selection  # noqa: E402

#: ``noisy_student`` keys and their defaults.
DEFAULTS = dict(
    rounds=2, teacher_config=None, threshold=0.3, per_class=None,
    hard=False, batch_size=256)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Noisy Student training, resumable, N rounds')
    parser.add_argument('config', help='the student config, with '
                        '`noisy_student` and `unlabeled_dataset`')
    parser.add_argument('--work-dir', required=True)
    parser.add_argument('--rounds', type=int,
                        help='override noisy_student.rounds')
    parser.add_argument(
        '--teacher-checkpoint',
        help='use this checkpoint of a `noisy_student.teacher_config` '
        'model as the teacher of round 1 instead of training round 0')
    parser.add_argument(
        '--cfg-options', nargs='+', default=[],
        help='passed to every training and pseudo-labeling step')
    return parser.parse_args(argv)


def read_settings(config: str, rounds: Optional[int] = None) -> dict:
    """``noisy_student`` of ``config``, validated (naming key and value)."""
    cfg = Config.fromfile(config)
    settings = dict(cfg.get('noisy_student') or {})
    unknown = sorted(set(settings) - set(DEFAULTS))
    if unknown:
        raise ValueError(f'Unknown keys {unknown} in `noisy_student`; '
                         f'expected some of {sorted(DEFAULTS)}')
    settings = {**DEFAULTS, **settings}
    if rounds is not None:
        settings['rounds'] = rounds
    if isinstance(settings['rounds'], bool) or not isinstance(
            settings['rounds'], int) or settings['rounds'] < 1:
        raise ValueError('`noisy_student.rounds` must be an integer >= 1, '
                         f'but got {settings["rounds"]!r}')
    teacher = settings['teacher_config']
    if not isinstance(teacher, str) or not osp.isfile(teacher):
        raise ValueError('`noisy_student.teacher_config` must be a config '
                         f'file, but got {teacher!r}')
    check_selection(settings['threshold'], settings['per_class'])
    if 'unlabeled_dataset' not in cfg:
        raise ValueError(f'{config}: the config needs an `unlabeled_dataset`'
                         ' (the un-noised images to pseudo-label)')
    return settings


def subprocess_tool(tool: str, args: List[str]) -> None:
    """Run ``tools/<tool>.py args`` in its own process."""
    subprocess.run([sys.executable, osp.join(TOOLS, f'{tool}.py'), *args],
                   check=True)


def last_checkpoint(work_dir: str) -> str:
    """The checkpoint MMEngine saved last in ``work_dir``."""
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        path = f.read().strip()
    return path if osp.isabs(path) else osp.join(work_dir, path)


class NoisyStudent:
    """The rounds of one Noisy Student run.

    Args:
        config (str): The student config.
        work_dir (str): Where the rounds go.
        cfg_options (list[str]): ``key=value`` passed to every step.
        rounds (int, optional): Overrides ``noisy_student.rounds``.
        teacher_checkpoint (str, optional): Round 0's teacher, not trained
            here (a checkpoint of a ``teacher_config`` model).
        run_tool (callable): ``(tool, args)``; runs ``tools/<tool>.py``
            (default: in a subprocess).
    """

    def __init__(self,
                 config: str,
                 work_dir: str,
                 cfg_options: Optional[List[str]] = None,
                 rounds: Optional[int] = None,
                 teacher_checkpoint: Optional[str] = None,
                 run_tool: Callable[[str, List[str]], None] = subprocess_tool
                 ) -> None:
        self.config = config
        self.work_dir = osp.abspath(work_dir)
        self.cfg_options = list(cfg_options or [])
        self.settings = read_settings(config, rounds)
        if teacher_checkpoint is not None and not osp.isfile(
                teacher_checkpoint):
            raise ValueError('--teacher-checkpoint must be a checkpoint '
                             f'file, but got {teacher_checkpoint!r}')
        self.teacher_checkpoint = teacher_checkpoint and osp.abspath(
            teacher_checkpoint)
        self.run_tool = run_tool

    def round_dir(self, r: int) -> str:
        return osp.join(self.work_dir, f'round{r}')

    def done(self, r: int) -> Optional[Dict[str, str]]:
        path = osp.join(self.round_dir(r), 'done.json')
        if not osp.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def _train(self, r: int, config: str, options: List[str]) -> None:
        args = [config, '--work-dir', self.round_dir(r), '--resume']
        options = self.cfg_options + options
        if options:
            args += ['--cfg-options', *options]
        self.run_tool('train', args)

    def run(self) -> List[Dict[str, str]]:
        """Run (or skip) every round; return their ``done.json``."""
        finished = []
        for r in range(self.settings['rounds'] + 1):
            record = self.done(r)
            if record is None:
                record = self._round(r, finished[-1] if finished else None)
            finished.append(record)
        return finished

    def _round(self, r: int, teacher: Optional[dict]) -> dict:
        os.makedirs(self.round_dir(r), exist_ok=True)
        record = dict(round=r)
        if r == 0 and self.teacher_checkpoint is not None:
            record['checkpoint'] = self.teacher_checkpoint
        elif r == 0:
            self._train(0, self.settings['teacher_config'], [])
        else:
            labels = osp.join(self.round_dir(r), 'pseudo_labels.npz')
            model_config = self.settings['teacher_config'] if r == 1 \
                else self.config
            args = [
                self.config, teacher['checkpoint'], '--out', labels,
                '--model-config', model_config, '--threshold',
                str(self.settings['threshold']), '--batch-size',
                str(self.settings['batch_size'])
            ]
            if self.settings['per_class'] is not None:
                args += ['--per-class', str(self.settings['per_class'])]
            if self.settings['hard']:
                args.append('--hard')
            if self.cfg_options:
                args += ['--cfg-options', *self.cfg_options]
            self.run_tool('pseudo_label', args)
            self._train(r, self.config, [
                'train_dataloader.dataset.datasets.1.pseudo_label_file=' +
                labels
            ])
            record.update(pseudo_labels=labels, teacher=teacher['checkpoint'])
        if 'checkpoint' not in record:  # trained here
            record['checkpoint'] = last_checkpoint(self.round_dir(r))
        with open(osp.join(self.round_dir(r), 'done.json'), 'w') as f:
            json.dump(record, f, indent=1)
        return record


def main(argv=None) -> List[Dict[str, str]]:
    args = parse_args(argv)
    records = NoisyStudent(args.config, args.work_dir, args.cfg_options,
                           args.rounds, args.teacher_checkpoint).run()
    print(f'Noisy Student: {len(records) - 1} rounds done; the last '
          f"student: {records[-1]['checkpoint']}")
    return records


if __name__ == '__main__':
    main()
