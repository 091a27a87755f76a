"""A resumable study runner: many short training runs, a few at a time.

A **study** is a list of **runs**; a run is one seed of one method (a
*group*) in one setting (a *table*, e.g. "40 labels"), made of one or more
**steps** (a config, its ``--cfg-options``; e.g. BYOL pretraining, then the
linear probes of its teacher and of its student). The scheduler runs at most
``jobs`` runs at a time, each step in its own single-threaded subprocess
(:data:`PINNED_ENV`, ``tools/studies/train_one.py``), and

* gives every run its own directory ``<root>/runs/<run name>`` and every
  step its own work dir in it; runs with the same name in two studies are
  the same run, done once; a step marked ``shared`` (e.g. the teacher that
  several runs start from) has its work dir in ``<root>/shared/`` and is
  done once, by the first run that gets to it, while the others wait;
* skips a run whose ``result.json`` exists, and a step whose ``done.json``
  exists;
* resumes an interrupted step from its last checkpoint (``--resume``:
  MMEngine's resume from the latest checkpoint in the work dir; a step
  interrupted before its first checkpoint starts again);
* after every finished run, aggregates the finished runs with
  ``tools/analysis/compare_runs.py`` (median of the last N evaluations,
  mean ± std over seeds, paired difference to the baseline group) and
  writes ``<root>/<study>.md``, ``<study>.json`` and ``<study>.png``.

An interrupted study (Ctrl-C, a killed job, a reboot) picks up where it
stopped when its command is run again.
"""
import contextlib
import importlib.util
import json
import math
import os
import os.path as osp
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TRAIN_ONE = osp.join(REPO_ROOT, 'tools', 'studies', 'train_one.py')
#: The script of each kind of step, given ``CONFIG --work-dir DIR
#: [--cfg-options ...]``; ``tools/train.py`` also gets ``--resume``
#: (``tools/noisy_student.py`` always resumes).
TOOLS = {
    'train': TRAIN_ONE,
    'noisy_student': osp.join(REPO_ROOT, 'tools', 'noisy_student.py'),
}

#: The environment of every training process: one thread, and CPU kernels
#: pinned to one instruction set, so that a run gives the same numbers on
#: any x86-64 machine with AVX2 and the pinned stack (docs/studies.md).
#: ``ONEDNN_MAX_CPU_ISA=AVX2`` is honoured by torch 2.14's oneDNN
#: (``ONEDNN_VERBOSE=1`` prints ``isa:Intel AVX2``); ``SSE41`` is also
#: accepted and would cover older CPUs, but doubles the time of a step.
PINNED_ENV = {
    'OMP_NUM_THREADS': '1',
    'MKL_NUM_THREADS': '1',
    'OPENBLAS_NUM_THREADS': '1',
    'ATEN_CPU_CAPABILITY': 'default',
    'MKL_CBWR': 'COMPATIBLE',
    'ONEDNN_MAX_CPU_ISA': 'AVX2',
    'PYTHONHASHSEED': '0',
}
RESULT_FILE = 'result.json'
DONE_FILE = 'done.json'


@dataclass
class Step:
    """One training command of a run.

    Attributes:
        name (str): The step's work dir inside the run's directory.
        config (str): Config path, relative to the repository root.
        cfg_options (dict): ``--cfg-options``; string values may use
            ``{run_dir}`` (the run's directory, e.g. to load the checkpoint
            of an earlier step) and ``{shared_dir}`` (``<root>/shared``).
        tool (str): A key of :data:`TOOLS`. Defaults to ``'train'``.
        args (list[str]): More arguments of the tool (formatted as the
            options are), e.g. ``['--teacher-checkpoint', PATH]``.
        shared (str, optional): If given, the step's work dir is
            ``<root>/shared/<shared>``, and the step is done once for all
            the runs that have it.
    """
    name: str
    config: str
    cfg_options: Dict[str, object] = field(default_factory=dict)
    tool: str = 'train'
    args: List[str] = field(default_factory=list)
    shared: Optional[str] = None

    def work_dir(self, root: str, rdir: str) -> str:
        """The step's work dir, for a run in ``rdir`` of a study in
        ``root``."""
        if self.shared is not None:
            return osp.join(shared_dir(root), self.shared)
        return osp.join(rdir, self.name)


@dataclass
class Run:
    """One seed of one method in one setting.

    Attributes:
        name (str): Unique name, the run's directory.
        table (str): The setting it is compared in (e.g. ``'40 labels'``).
        group (str): The method (e.g. ``'FixMatch, STS'``).
        seed (int): The seed; runs of a table are paired by it.
        steps (list[Step]): Run in order.
        metrics (dict[str, tuple[str, str]]): Reported label -> (step name,
            evaluated key), e.g. ``{'teacher': ('train',
            'teacher/accuracy/top1')}``.
    """
    name: str
    table: str
    group: str
    seed: int
    steps: List[Step]
    metrics: Dict[str, Tuple[str, str]]


@dataclass
class Study:
    """A named list of runs and how to report them.

    Attributes:
        name (str): The study's name: ``<root>/<name>.md|json|png``.
        title (str): The first line of the report.
        runs (list[Run]): Its runs, in the order they are started.
        baselines (dict[str, str]): Table -> baseline group.
        last_n (int): Evaluations the median is taken over.
        command (str): The command that runs the study, for the report.
        notes (str): Markdown put under the title.
    """
    name: str
    title: str
    runs: List[Run]
    baselines: Dict[str, str]
    last_n: int = 5
    command: str = ''
    notes: str = ''


def load_compare_runs():
    """Import ``tools/analysis/compare_runs.py`` (tools are no package)."""
    path = osp.join(REPO_ROOT, 'tools', 'analysis', 'compare_runs.py')
    spec = importlib.util.spec_from_file_location('compare_runs', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_dir(root: str, run: Run) -> str:
    return osp.join(root, 'runs', run.name)


def shared_dir(root: str) -> str:
    return osp.join(root, 'shared')


def step_dir(root: str, run: Run, name: str) -> str:
    """The work dir of the run's step called ``name``."""
    for step in run.steps:
        if step.name == name:
            return step.work_dir(root, run_dir(root, run))
    raise KeyError(f'{run.name} has no step {name!r}')


def _format_option(value, rdir: str, root: str) -> str:
    if isinstance(value, str):
        return value.format(run_dir=rdir, shared_dir=shared_dir(root))
    return repr(value) if isinstance(value, (list, tuple)) else str(value)


def step_command(step: Step, rdir: str, tool_cmd: Sequence[str],
                 root: Optional[str] = None) -> List[str]:
    """The command line of one step of the run in ``rdir`` (a training
    always with ``--resume``: it resumes from the latest checkpoint in the
    work dir, or starts if there is none).

    Args:
        step (Step): The step.
        rdir (str): The run's directory, ``<root>/runs/<name>``.
        tool_cmd (Sequence[str]): The command of the step's tool.
        root (str, optional): The study's root. Defaults to the parent of
            ``rdir``'s parent.
    """
    root = root or osp.dirname(osp.dirname(rdir))
    cmd = list(tool_cmd) + [
        osp.join(REPO_ROOT, step.config) if not osp.isabs(step.config) else
        step.config, '--work-dir',
        step.work_dir(root, rdir)
    ]
    if step.tool == 'train':
        cmd.append('--resume')
    cmd += [_format_option(a, rdir, root) for a in step.args]
    if step.cfg_options:
        cmd.append('--cfg-options')
        cmd += [
            f'{k}={_format_option(v, rdir, root)}'
            for k, v in step.cfg_options.items()
        ]
    return cmd


def load_evaluations(work_dir: str) -> List[dict]:
    """The validation records of all the sessions of a (resumed) run.

    MMEngine writes each session (the first one and every resume) to its
    own ``<timestamp>/vis_data/scalars.json``; the records of all of them
    are merged by step, a later session's record replacing an earlier one
    of the same step (an evaluation repeated after a resume).
    """
    import glob
    compare_runs = load_compare_runs()
    by_step = {}
    for path in sorted(
            glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        for record in compare_runs.load_val_scalars(path):
            by_step[record['step']] = record
    return [by_step[s] for s in sorted(by_step)]


def collect_result(run: Run, root: str, last_n: int) -> dict:
    """Summarise a finished run's metrics (compare_runs'
    ``summarize_evaluations``)."""
    compare_runs = load_compare_runs()
    metrics = {}
    for label, (step, key) in run.metrics.items():
        # ``step`` is a step's name, or a folder inside its work dir
        # (``'students/round1'``).
        name, _, inside = step.partition('/')
        metrics[label] = compare_runs.summarize_evaluations(
            load_evaluations(
                osp.join(step_dir(root, run, name), inside)), key, last_n)
    return dict(
        name=run.name,
        table=run.table,
        group=run.group,
        seed=run.seed,
        metrics=metrics)


def cpu_seconds(result: dict) -> float:
    """The CPU time of a run's steps, without the shared steps another
    run did."""
    return sum(t['cpu_s'] for t in result.get('timings', {}).values()
               if not t.get('shared'))


def _write_json(path: str, obj) -> None:
    tmp = path + '.part'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


class Scheduler:
    """Runs the runs of studies, at most ``jobs`` processes at a time.

    Args:
        root (str): Where the runs and the reports go.
        jobs (int): Processes at a time (one run each). Defaults to 2.
        train_cmd (Sequence[str], optional): The training command, given
            ``CONFIG --work-dir DIR --resume [--cfg-options ...]``.
            Defaults to ``[python, tools/studies/train_one.py]``.
        tool_cmds (dict, optional): The commands of the other tools of
            :data:`TOOLS`. Defaults to ``[python, TOOLS[tool]]``.
        env (dict, optional): Added to the environment of every process.
            Defaults to :data:`PINNED_ENV`.
        log (callable): Progress messages. Defaults to ``print``.
    """

    def __init__(self,
                 root: str,
                 jobs: int = 2,
                 train_cmd: Optional[Sequence[str]] = None,
                 tool_cmds: Optional[Dict[str, Sequence[str]]] = None,
                 env: Optional[Dict[str, str]] = None,
                 log: Callable[[str], None] = print) -> None:
        if jobs < 1:
            raise ValueError(f'jobs must be >= 1, got {jobs}')
        self.root = osp.abspath(root)
        self.jobs = jobs
        self.tool_cmds = {
            tool: [sys.executable, script]
            for tool, script in TOOLS.items()
        }
        self.tool_cmds.update(tool_cmds or {})
        if train_cmd is not None:
            self.tool_cmds['train'] = list(train_cmd)
        self.env = dict(os.environ, **(PINNED_ENV if env is None else env))
        self.log = log
        self._lock = threading.Lock()
        self._procs = set()
        self._shared_locks: Dict[str, threading.Lock] = {}
        self._stopping = False
        #: Largest number of processes seen running at once (for tests).
        self.max_running = 0

    # -- one run ---------------------------------------------------------
    def _run_step(self, step: Step, rdir: str) -> dict:
        work_dir = step.work_dir(self.root, rdir)
        os.makedirs(work_dir, exist_ok=True)
        cmd = step_command(step, rdir, self.tool_cmds[step.tool], self.root)
        start = time.time()
        with open(osp.join(work_dir, 'train.log'), 'a') as out:
            out.write(f'\n$ {" ".join(cmd)}\n')
            out.flush()
            with self._lock:
                if self._stopping:
                    raise KeyboardInterrupt
                # Its own process group: stop() ends the processes a tool
                # starts too (tools/noisy_student.py runs its trainings in
                # child processes).
                proc = subprocess.Popen(
                    cmd, env=self.env, stdout=out, stderr=out,
                    cwd=REPO_ROOT, start_new_session=True)
                self._procs.add(proc)
                self.max_running = max(self.max_running, len(self._procs))
            try:
                # wait4 gives the child's own CPU time.
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
            finally:
                with self._lock:
                    self._procs.discard(proc)
        if proc.returncode != 0:
            raise RuntimeError(
                f'{" ".join(cmd)} exited with {proc.returncode}; see '
                f'{osp.join(work_dir, "train.log")}')
        return dict(
            wall_s=time.time() - start,
            cpu_s=usage.ru_utime + usage.ru_stime)

    def run_one(self, run: Run, last_n: int) -> dict:
        """Run (or finish) one run and write its ``result.json``."""
        rdir = run_dir(self.root, run)
        result_path = osp.join(rdir, RESULT_FILE)
        if osp.isfile(result_path):
            with open(result_path) as f:
                return json.load(f)
        os.makedirs(rdir, exist_ok=True)
        timings = {}
        for step in run.steps:
            with self._step_lock(step):
                done = osp.join(step.work_dir(self.root, rdir), DONE_FILE)
                if osp.isfile(done):
                    with open(done) as f:
                        timings[step.name] = json.load(f)
                    if step.shared is not None:  # counted once, where done
                        timings[step.name] = dict(
                            timings[step.name], shared=True)
                    continue
                self.log(f'[{time.strftime("%H:%M:%S")}] start {run.name} '
                         f'/ {step.name}')
                timings[step.name] = self._run_step(step, rdir)
                _write_json(done, timings[step.name])
        result = collect_result(run, self.root, last_n)
        result['timings'] = timings
        _write_json(result_path, result)
        self.log(f'[{time.strftime("%H:%M:%S")}] done {run.name} '
                 f'({cpu_seconds(result):.0f} CPU-s)')
        return result

    def _step_lock(self, step: Step):
        """A lock held while a shared step is checked and done (a no-op
        for the run's own steps)."""
        if step.shared is None:
            return contextlib.nullcontext()
        with self._lock:
            return self._shared_locks.setdefault(step.shared,
                                                 threading.Lock())

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called (e.g. by SIGTERM)."""
        return self._stopping

    def stop(self) -> None:
        """Terminate the running steps, with the processes they started
        (their runs resume later)."""
        self.log(f'[{time.strftime("%H:%M:%S")}] stopping: the running '
                 'steps are terminated and resume from their last '
                 'checkpoint next time')
        with self._lock:
            self._stopping = True
            for proc in self._procs:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:  # already gone
                    pass

    # -- studies ---------------------------------------------------------
    def run(self,
            studies: Sequence[Study],
            on_result: Optional[Callable[[Study], None]] = None) -> dict:
        """Run every run of ``studies`` (each distinct run once).

        Args:
            studies (Sequence[Study]): The studies.
            on_result (callable, optional): Called with a study each time one
                of its runs finishes (e.g. to rewrite its report).

        Returns:
            dict: Run name -> result, or the error for failed runs.
        """
        runs, owners = [], {}
        for study in studies:
            for run in study.runs:
                if run.name not in owners:
                    runs.append((run, study.last_n))
                owners.setdefault(run.name, []).append(study)
        results = {}

        def work(item):
            run, last_n = item
            if self._stopping:
                return
            try:
                results[run.name] = self.run_one(run, last_n)
            except KeyboardInterrupt:
                return
            except Exception as e:  # reported, the others go on
                if self._stopping:  # terminated: resumes next time
                    return
                results[run.name] = dict(error=str(e))
                self.log(f'FAILED {run.name}: {e}')
                return
            if on_result is not None:
                with self._lock:
                    for study in owners[run.name]:
                        on_result(study)

        previous = signal.getsignal(signal.SIGTERM)
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGTERM, lambda *_: self.stop())
        try:
            with ThreadPoolExecutor(self.jobs) as pool:
                try:
                    list(pool.map(work, runs))
                except KeyboardInterrupt:
                    # Before the pool waits for its threads: the steps run
                    # in their own sessions and do not get the Ctrl-C.
                    self.stop()
                    raise
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)
        return results


# ----------------------------------------------------------------------
# Reports
# ----------------------------------------------------------------------
def finished_results(study: Study, root: str) -> List[Tuple[Run, dict]]:
    """The study's finished runs with their ``result.json``."""
    out = []
    for run in study.runs:
        path = osp.join(run_dir(root, run), RESULT_FILE)
        if osp.isfile(path):
            with open(path) as f:
                out.append((run, json.load(f)))
    return out


def aggregate(study: Study, results: Sequence[Tuple[Run, dict]]) -> dict:
    """Mean ± std and paired differences of a study's finished runs.

    A run is placed by the study's definition (its table, group and seed),
    so one run can serve in several tables or studies. Within a table, only
    the seeds finished in *every* group of the table are used (the pairs
    must be complete); runs still missing are counted.

    Returns:
        dict: ``tables``: table -> ``seeds`` (the seeds used), ``missing``
        (group -> runs not finished) and ``metrics``: metric -> compare_runs'
        ``aggregate_groups`` output (group -> statistics).
    """
    compare_runs = load_compare_runs()
    planned: Dict[str, Dict[str, set]] = {}
    for run in study.runs:
        planned.setdefault(run.table, {}).setdefault(run.group,
                                                     set()).add(run.seed)
    got: Dict[Tuple[str, str, int], dict] = {
        (run.table, run.group, run.seed): result
        for run, result in results
    }
    tables = {}
    for table, groups in planned.items():
        seeds = sorted(
            set.intersection(*[{s
                                for s in planned_seeds
                                if (table, g, s) in got}
                               for g, planned_seeds in groups.items()]))
        missing = {
            g: len([s for s in ps if (table, g, s) not in got])
            for g, ps in groups.items()
        }
        entry = dict(seeds=seeds, missing=missing, metrics={}, whole_runs={})
        if seeds:
            first = got[(table, next(iter(groups)), seeds[0])]
            baseline = study.baselines.get(table)
            for label in first['metrics']:
                by_group = {
                    g: [got[(table, g, s)]['metrics'][label] for s in seeds]
                    for g in groups
                }
                entry['metrics'][label] = compare_runs.aggregate_groups(
                    by_group, baseline if baseline in by_group else None)
                # Runs whose "median of the last n" reaches back to their
                # first evaluation: a mid-training value, not an end state.
                entry['whole_runs'][label] = sorted(
                    f'{g} seed {s}' for g, runs in by_group.items()
                    for s, m in zip(seeds, runs)
                    if m.get('evaluations', m['last_n'] + 1) <= m['last_n'])
        tables[table] = entry
    return dict(study=study.name, title=study.title, last_n=study.last_n,
                baselines=study.baselines, tables=tables)


def _pm(stats: Optional[dict]) -> str:
    if stats is None:
        return '—'
    std = '—' if stats['std'] is None else f'{stats["std"]:.2f}'
    return f'{stats["mean"]:.2f} ± {std}'


def report_markdown(study: Study, summary: dict,
                    wall_s: Optional[float] = None) -> str:
    """The report: one table per (setting, metric)."""
    lines = [f'# {study.title}', '']
    if study.notes:
        lines += [study.notes, '']
    if study.command:
        lines += [f'Command: `{study.command}`', '']
    if wall_s is not None:
        lines += [f'Wall time of the last invocation: {wall_s / 60:.0f} min',
                  '']
    n = summary['last_n']
    for table, entry in summary['tables'].items():
        baseline = summary['baselines'].get(table, '—')
        missing = sum(entry['missing'].values())
        status = f'{len(entry["seeds"])} seeds complete {entry["seeds"]}'
        if missing:
            status += f', {missing} runs not finished'
        lines += [f'## {table} ({status})', '']
        if not entry['metrics']:
            lines += ['running / not yet measured', '']
            continue
        for label, groups in entry['metrics'].items():
            lines += [
                f'**{label}**: test top-1 (%), median of the last {n} '
                'evaluations of each run, then mean ± std over seeds',
                '',
                '| method | seeds | median of last, mean ± std | '
                f'final, mean ± std | paired difference to {baseline} '
                '(median of last) | per seed |',
                '| --- | ---: | ---: | ---: | ---: | --- |',
            ]
            for group, g in groups.items():
                per_seed = ', '.join(
                    f'{v:.1f}' for v in g['median_last']['values'])
                lines.append(
                    f'| {group} | {g["median_last"]["n"]} | '
                    f'{_pm(g["median_last"])} | {_pm(g["final"])} | '
                    f'{_pm(g.get("diff_median_last"))} | {per_seed} |')
            lines.append('')
            whole = entry['whole_runs'].get(label)
            if whole:
                lines += [
                    f'**Warning:** {len(whole)} run(s) ({", ".join(whole)}) '
                    f'have at most {n} evaluations, so their median of the '
                    f'last {n} includes the first evaluation: a value from '
                    'mid-training, not from the end of it. Evaluate more '
                    'often or train longer.', ''
                ]
    return '\n'.join(lines)


def plot_summary(summary: dict, out: str) -> None:
    """One subplot per (setting, metric): each seed's median of the last
    evaluations per method, and the mean ± std."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    panels = [(t, m, g) for t, e in summary['tables'].items()
              for m, g in e['metrics'].items()]
    if not panels:  # nothing finished yet: say so in the image
        fig = Figure(figsize=(6, 2))
        FigureCanvasAgg(fig)
        fig.text(0.5, 0.5, f'{summary["title"]}\nno finished runs yet',
                 ha='center', va='center')
        fig.savefig(out, dpi=100)
        return
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(6.5 * cols, 3.8 * rows), layout='constrained')
    FigureCanvasAgg(fig)
    for i, (table, metric, groups) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        for x, (group, g) in enumerate(groups.items()):
            values = g['median_last']['values']
            ax.plot([x] * len(values), values, 'o', alpha=0.5, color='C0')
            std = g['median_last']['std'] or 0.0
            ax.errorbar(x + 0.15, g['median_last']['mean'], yerr=std,
                        fmt='s', color='C3', capsize=4)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(list(groups), rotation=20, ha='right',
                           fontsize=8)
        ax.set_title(f'{table}: {metric}', fontsize=10)
        ax.set_ylabel(f'top-1 (%), median of last {summary["last_n"]}')
        ax.grid(alpha=0.3)
    fig.suptitle(summary['title'], fontsize=11)
    fig.savefig(out, dpi=100)


def write_report(study: Study, root: str,
                 wall_s: Optional[float] = None) -> dict:
    """Aggregate the finished runs; write ``<root>/<study>.md|json|png``."""
    summary = aggregate(study, finished_results(study, root))
    os.makedirs(root, exist_ok=True)
    base = osp.join(root, study.name)
    with open(base + '.md.part', 'w') as f:
        f.write(report_markdown(study, summary, wall_s) + '\n')
    os.replace(base + '.md.part', base + '.md')
    _write_json(base + '.json', summary)
    plot_summary(summary, base + '.png')
    return summary
