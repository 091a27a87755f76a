"""tools/studies/: the scheduler (at most `jobs` processes, skip finished
runs, resume interrupted ones) with a fake training command, and the
aggregation and report on synthetic results."""
import json
import os
import os.path as osp
import sys
import signal
import subprocess
import textwrap
import threading
import time

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, osp.join(REPO_ROOT, 'tools', 'studies'))
import run_study  # noqa: E402
import runner  # noqa: E402
from runner import Run, Scheduler, Step, Study  # noqa: E402

# A fake "training": CONFIG --work-dir DIR --resume [--cfg-options k=v ...].
# It "trains" `iters` iterations (config file: one number), checkpoints each
# one in DIR/ckpt, writes one evaluation per iteration to a new
# <session>/vis_data/scalars.json (as MMEngine does on every start), and
# starts from the checkpoint when there is one. It dies after `die_at`
# iterations if DIR/../die exists (then removes it), and records the
# number of processes running at once in a shared folder.
FAKE_TRAIN = textwrap.dedent('''
    import json, os, sys, time
    config, _, work_dir, _ = sys.argv[1:5]
    opts = dict(a.split('=', 1) for a in sys.argv[6:])
    iters = int(open(config).read())
    seed = int(opts.get('randomness.seed', 0))
    bonus = float(opts.get('bonus', 0))
    live = os.environ['FAKE_LIVE']
    me = os.path.join(live, str(os.getpid()))
    open(me, 'w').close()
    peak = os.path.join(live, 'peak')
    n = len([f for f in os.listdir(live) if f.isdigit()])
    with open(peak, 'a') as f:
        f.write(f'{n}\\n')
    os.makedirs(work_dir, exist_ok=True)
    ckpt = os.path.join(work_dir, 'ckpt')
    start = int(open(ckpt).read()) if os.path.exists(ckpt) else 0
    with open(os.path.join(work_dir, 'starts'), 'a') as f:
        f.write(f'{start}\\n')
    session = os.path.join(work_dir, f'session{len(os.listdir(work_dir))}',
                           'vis_data')
    os.makedirs(session)
    die = os.path.join(os.path.dirname(work_dir), 'die')
    for it in range(start + 1, iters + 1):
        time.sleep(0.05)
        with open(os.path.join(session, 'scalars.json'), 'a') as f:
            f.write(json.dumps({'acc': 50 + seed + bonus + it,
                                'step': it}) + '\\n')
        open(ckpt, 'w').write(str(it))
        if os.path.exists(die) and it == 2:
            os.remove(die)
            os.remove(me)
            sys.exit(3)
    os.remove(me)
''')


@pytest.fixture
def fake(tmp_path):
    script = tmp_path / 'fake_train.py'
    script.write_text(FAKE_TRAIN)
    config = tmp_path / 'config.txt'
    config.write_text('4')
    live = tmp_path / 'live'
    live.mkdir()
    return dict(
        cmd=[sys.executable, str(script)],
        config=str(config),
        live=str(live),
        root=str(tmp_path / 'root'))


def make_study(fake, seeds=(0, 1, 2), groups=('A', 'B'), name='toy'):
    runs = []
    for seed in seeds:
        for i, group in enumerate(groups):
            runs.append(
                Run(name=f'{group}_seed{seed}',
                    table='t',
                    group=group,
                    seed=seed,
                    steps=[
                        Step('train', fake['config'], {
                            'randomness.seed': seed,
                            'bonus': i
                        })
                    ],
                    metrics={'acc': ('train', 'acc')}))
    return Study(name, 'Toy', runs, baselines={'t': 'A'}, last_n=2)


def scheduler(fake, jobs=2):
    return Scheduler(
        fake['root'], jobs=jobs, train_cmd=fake['cmd'],
        env=dict(runner.PINNED_ENV, FAKE_LIVE=fake['live']),
        log=lambda msg: None)


def peak(fake):
    with open(osp.join(fake['live'], 'peak')) as f:
        return max(int(x) for x in f.read().split())


def starts(fake, run):
    path = osp.join(fake['root'], 'runs', run, 'train', 'starts')
    with open(path) as f:
        return [int(x) for x in f.read().split()]


def test_pinned_environment():
    env = runner.PINNED_ENV
    assert env['OMP_NUM_THREADS'] == '1' and env['MKL_NUM_THREADS'] == '1'
    assert env['ATEN_CPU_CAPABILITY'] == 'default'
    assert env['MKL_CBWR'] == 'COMPATIBLE'
    assert env['ONEDNN_MAX_CPU_ISA'] == 'AVX2'


def test_runs_all_at_most_jobs_at_a_time(fake):
    study = make_study(fake)
    sched = scheduler(fake, jobs=2)
    reports = []
    results = sched.run([study], on_result=lambda s: reports.append(s.name))
    assert len(results) == 6
    assert all('error' not in r for r in results.values())
    assert sched.max_running <= 2 and peak(fake) <= 2
    assert reports == ['toy'] * 6  # the report is rewritten per finished run
    result = results['B_seed1']
    # 4 evaluations 50 + 1 + 1 + k (seed 1, bonus 1); median of the last 2.
    assert result['metrics']['acc']['median_last'] == pytest.approx(55.5)
    assert result['metrics']['acc']['evaluations'] == 4
    assert set(result['timings']['train']) == {'wall_s', 'cpu_s'}
    for name in results:
        assert osp.isfile(osp.join(fake['root'], 'runs', name, 'result.json'))


def test_one_job_runs_one_process(fake):
    sched = scheduler(fake, jobs=1)
    sched.run([make_study(fake, seeds=(0, 1))])
    assert sched.max_running == 1 and peak(fake) == 1


def test_finished_runs_are_skipped(fake):
    study = make_study(fake, seeds=(0, ))
    scheduler(fake).run([study])
    first = {r.name: starts(fake, r.name) for r in study.runs}
    results = scheduler(fake).run([study])
    assert {r.name: starts(fake, r.name) for r in study.runs} == first
    assert results['A_seed0']['metrics']['acc']['final'] == 54


def test_interrupted_run_resumes_from_its_checkpoint(fake):
    study = make_study(fake, seeds=(0, ), groups=('A', ))
    rdir = osp.join(fake['root'], 'runs', 'A_seed0')
    os.makedirs(rdir)
    open(osp.join(rdir, 'die'), 'w').close()
    results = scheduler(fake).run([study])
    assert 'error' in results['A_seed0']  # died after 2 iterations
    assert not osp.exists(osp.join(rdir, 'result.json'))
    results = scheduler(fake).run([study])
    assert starts(fake, 'A_seed0') == [0, 2]  # resumed at iteration 2
    acc = results['A_seed0']['metrics']['acc']
    # The evaluations of both sessions are merged: 4, not 2.
    assert acc['evaluations'] == 4 and acc['final'] == 54


def test_command_line_of_a_step(tmp_path):
    step = Step('probe', 'configs/x.py', {
        'a.b': 1,
        'ckpt': '{run_dir}/pretrain/epoch_2.pth'
    })
    cmd = runner.step_command(step, '/r/runs/x', ['python', 'train.py'])
    assert cmd[:2] == ['python', 'train.py']
    assert cmd[2] == osp.join(REPO_ROOT, 'configs/x.py')
    assert cmd[3:6] == ['--work-dir', '/r/runs/x/probe', '--resume']
    assert cmd[6:] == [
        '--cfg-options', 'a.b=1', 'ckpt=/r/runs/x/pretrain/epoch_2.pth'
    ]


def test_command_line_of_another_tool(tmp_path):
    """Another tool gets no ``--resume``, and its extra arguments and
    options may name the study's shared folder."""
    step = Step('rounds', 'configs/x.py', {'a': 1}, tool='noisy_student',
                args=['--teacher', '{shared_dir}/t/last.pth'], shared=None)
    cmd = runner.step_command(step, '/r/runs/x', ['python', 'ns.py'])
    assert cmd[3:] == [
        '--work-dir', '/r/runs/x/rounds', '--teacher', '/r/shared/t/last.pth',
        '--cfg-options', 'a=1'
    ]
    shared = Step('teacher', 'configs/t.py', shared='t')
    assert runner.step_command(shared, '/r/runs/x', ['python'])[1:4] == [
        osp.join(REPO_ROOT, 'configs/t.py'), '--work-dir', '/r/shared/t'
    ]


def test_a_shared_step_is_done_once_for_all_its_runs(fake):
    """Two runs that start from the same shared step, started at the same
    time: one does it, the other waits for it, and its CPU time is counted
    once."""
    runs = [
        Run(name=f'{group}_seed0', table='t', group=group, seed=0,
            steps=[
                Step('pre', fake['config'], shared='pre_seed0'),
                Step('train', fake['config'], {'bonus': i}),
            ],
            metrics={'pre': ('pre', 'acc'), 'acc': ('train', 'acc')})
        for i, group in enumerate('AB')
    ]
    sched = scheduler(fake, jobs=2)
    results = sched.run([Study('s', 'S', runs, baselines={})])
    with open(osp.join(fake['root'], 'shared', 'pre_seed0', 'starts')) as f:
        assert f.read().split() == ['0']  # trained once
    assert not osp.exists(osp.join(fake['root'], 'runs', 'A_seed0', 'pre'))
    shared = [r['timings']['pre'].get('shared', False)
              for r in results.values()]
    assert sorted(shared) == [False, True]
    for r in results.values():
        assert r['metrics']['pre']['final'] == 54  # read from the shared dir
        assert runner.cpu_seconds(r) == sum(
            t['cpu_s'] for t in r['timings'].values() if not t.get('shared'))
    assert results['B_seed0']['metrics']['acc']['final'] == 55


# A tool that runs its work in a child process (as tools/noisy_student.py
# runs tools/train.py), which writes its pid and sleeps.
PARENT_TOOL = textwrap.dedent('''
    import subprocess, sys
    work_dir = sys.argv[3]
    subprocess.run([sys.executable, '-c',
                    'import os, sys, time; '
                    'open(sys.argv[1], "w").write(str(os.getpid())); '
                    'time.sleep(60)', work_dir + '.child'])
''')


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f'/proc/{pid}/stat') as f:  # a zombie is gone too
        return f.read().split()[2] != 'Z'


def test_stop_ends_the_processes_a_step_started(fake, tmp_path):
    """stop() (SIGTERM) ends a running tool *and* the children it started;
    without it, an orphaned training would keep a core and write into a
    work dir that the resumed study trains again."""
    script = tmp_path / 'parent_tool.py'
    script.write_text(PARENT_TOOL)
    study = make_study(fake, seeds=(0, ), groups=('A', ))
    sched = scheduler(fake, jobs=1)
    sched.tool_cmds['train'] = [sys.executable, str(script)]
    thread = threading.Thread(target=sched.run, args=([study], ))
    thread.start()
    pid = _wait_for_pid(
        osp.join(fake['root'], 'runs', 'A_seed0', 'train.child'))
    sched.stop()
    thread.join(30)
    assert not thread.is_alive() and sched.stopped
    _assert_ends(pid)


def _wait_for_pid(path):
    deadline = time.time() + 30
    while not (osp.isfile(path) and open(path).read()):
        assert time.time() < deadline, 'the child did not start'
        time.sleep(0.05)
    return int(open(path).read())


def _assert_ends(pid):
    deadline = time.time() + 10
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.05)
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)
        pytest.fail('the step\'s child process outlived the study')


def test_ctrl_c_ends_the_study_and_its_steps(fake, tmp_path):
    """Ctrl-C reaches the study (the steps run in their own sessions and
    do not get it): the study stops its steps and exits instead of waiting
    for them."""
    script = tmp_path / 'parent_tool.py'
    script.write_text(PARENT_TOOL)
    main = tmp_path / 'main.py'
    # A shell started in the background (as CI may run the tests) passes
    # SIGINT on ignored; a terminal's Ctrl-C reaches Python's own handler.
    main.write_text(textwrap.dedent(f'''
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        sys.path.insert(0, {osp.dirname(runner.__file__)!r})
        from runner import Run, Scheduler, Step, Study
        sched = Scheduler({fake['root']!r}, jobs=1,
                          train_cmd=[sys.executable, {str(script)!r}])
        run = Run('A_seed0', 't', 'A', 0, [Step('train', 'x.py')], {{}})
        sched.run([Study('s', 'S', [run], baselines={{}})])
    '''))
    proc = subprocess.Popen([sys.executable, str(main)],
                            stderr=subprocess.DEVNULL)
    pid = _wait_for_pid(
        osp.join(fake['root'], 'runs', 'A_seed0', 'train.child'))
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(30) != 0
    finally:
        proc.kill()
    _assert_ends(pid)


def test_shared_runs_are_run_once(fake):
    a = make_study(fake, seeds=(0, ), name='one')
    b = make_study(fake, seeds=(0, ), name='two')
    results = scheduler(fake).run([a, b])
    assert len(results) == 2
    assert starts(fake, 'A_seed0') == [0]


# -- aggregation on synthetic results --------------------------------------
def synthetic(group, seed, value, table='t'):
    summary = dict(metric='acc', median_last=value, last_n=5, last_n_used=5,
                   final=value + 1, final_step=1000, best=value + 2,
                   best_step=500, evaluations=10)
    run = Run(f'{group}{seed}', table, group, seed, [], {})
    return run, dict(metrics={'teacher': summary})


def test_aggregate_pairs_by_seed_and_skips_incomplete_seeds():
    values = {('TMA', 0): 70.0, ('TMA', 1): 72.0, ('TMA', 2): 71.0,
              ('STS', 0): 71.0, ('STS', 1): 72.5}  # STS seed 2 not done
    results = [synthetic(g, s, v) for (g, s), v in values.items()]
    planned = [r for r, _ in results] + [Run('STS2', 't', 'STS', 2, [], {})]
    study = Study('s', 'S', planned, baselines={'t': 'TMA'})
    summary = runner.aggregate(study, results)
    entry = summary['tables']['t']
    assert entry['seeds'] == [0, 1]
    assert entry['missing'] == {'TMA': 0, 'STS': 1}
    sts = entry['metrics']['teacher']['STS']
    assert sts['median_last']['mean'] == pytest.approx(71.75)
    assert sts['diff_median_last']['values'] == pytest.approx([1.0, 0.5])
    assert sts['diff_median_last']['mean'] == pytest.approx(0.75)
    assert 'diff_median_last' not in entry['metrics']['teacher']['TMA']
    text = runner.report_markdown(study, summary)
    assert '| STS | 2 | 71.75 ± 1.06 |' in text
    assert '0.75 ± 0.35' in text
    assert '1 runs not finished' in text


def test_report_warns_when_the_median_covers_the_whole_run():
    """A run with no more evaluations than ``last_n`` reports a median
    that reaches back to its first evaluation; the report says so."""
    results = [synthetic(g, s, 70.0 + s) for s in range(2)
               for g in ('TMA', 'STS')]
    results[3][1]['metrics']['teacher'].update(evaluations=3, last_n=3)
    study = Study('s', 'S', [r for r, _ in results], baselines={'t': 'TMA'})
    summary = runner.aggregate(study, results)
    assert summary['tables']['t']['whole_runs'] == {
        'teacher': ['STS seed 1']
    }
    text = runner.report_markdown(study, summary)
    assert '**Warning:** 1 run(s) (STS seed 1)' in text
    del results[3][1]['metrics']['teacher']['evaluations']  # older files
    results[3][1]['metrics']['teacher'].update(last_n=5)
    text = runner.report_markdown(study, runner.aggregate(study, results))
    assert 'Warning' not in text


def test_report_files(tmp_path):
    results = [synthetic(g, s, 70.0 + s + (g == 'STS'))
               for s in range(3) for g in ('TMA', 'STS')]
    study = Study('toy', 'Toy', [r for r, _ in results],
                  baselines={'t': 'TMA'}, command='make toy')
    root = str(tmp_path)
    for run, result in results:
        os.makedirs(runner.run_dir(root, run))
        with open(osp.join(runner.run_dir(root, run), 'result.json'),
                  'w') as f:
            json.dump(result, f)
    summary = runner.write_report(study, root, wall_s=120)
    for ext in ('md', 'json', 'png'):
        assert osp.getsize(osp.join(root, f'toy.{ext}')) > 0
    with open(osp.join(root, 'toy.json')) as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    text = open(osp.join(root, 'toy.md')).read()
    assert 'Command: `make toy`' in text and '2 min' in text
    assert '| STS | 3 | 72.00 ± 1.00 |' in text


def test_nothing_finished_says_so(tmp_path):
    study = run_study.fixmatch_study(seeds=(0, ))
    runner.write_report(study, str(tmp_path))
    text = open(osp.join(str(tmp_path), 'fixmatch.md')).read()
    assert text.count('running / not yet measured') == 4
    assert osp.getsize(osp.join(str(tmp_path), 'fixmatch.png')) > 0


# -- the study definitions -------------------------------------------------
def test_fixmatch_study_definition():
    study = run_study.fixmatch_study()
    assert len(study.runs) == 30
    assert len({r.name for r in study.runs}) == 30
    for run in study.runs:
        opts = run.steps[0].cfg_options
        # The seed varies the init, the data order and the labeled split.
        assert opts['randomness.seed'] == run.seed
        assert opts['train_dataloader.sampler.seed'] == run.seed
        assert opts['train_dataloader.dataset.datasets.0.seed'] == run.seed
        assert osp.isfile(osp.join(REPO_ROOT, run.steps[0].config))
    assert set(study.baselines.values()) == {'FixMatch, TMA',
                                             'FixMatch-MT, TMA'}


def test_ablation_reuses_the_fixmatch_runs():
    fixmatch = {r.name for r in run_study.fixmatch_study().runs}
    ablation = run_study.ablation_study()
    names = {r.name for r in ablation.runs}
    assert len(names) == 21
    assert len(names - fixmatch) == 15
    groups = {r.group for r in ablation.runs}
    assert {'p = 0 (TMA)', 'p = 0.3', 'p = 0.5', 'p = 0.7', 'p = 0.9',
            'tensor', 'channel', 'element'} <= groups


def test_byol_study_definition():
    study = run_study.byol_study()
    assert len(study.runs) == 9
    run = study.runs[0]
    assert [s.name for s in run.steps] == [
        'pretrain', 'probe-teacher', 'probe-student'
    ]
    probe = run.steps[1].cfg_options
    assert probe['model.backbone.init_cfg.prefix'] == 'target_net.module.0.'
    assert probe['model.backbone.init_cfg.checkpoint'].endswith(
        f'pretrain/epoch_{run_study.BYOL_EPOCHS}.pth')
    for step in run.steps:
        assert osp.isfile(osp.join(REPO_ROOT, step.config))


def test_noisy_student_study_definition():
    """3 smoothings x 3 seeds; round 0 is one shared teacher per seed, whose
    last checkpoint the rounds start from."""
    study = run_study.noisy_student_study()
    assert len(study.runs) == 9
    assert {r.group for r in study.runs} == {'STS', 'EMA', 'raw'}
    assert study.baselines == {study.runs[0].table: 'EMA'}
    by_seed = {}
    for run in study.runs:
        teacher, rounds = run.steps
        assert teacher.shared and rounds.shared is None
        by_seed.setdefault(run.seed, set()).add(teacher.shared)
        assert rounds.tool == 'noisy_student'
        assert rounds.args == [
            '--teacher-checkpoint', f'{{shared_dir}}/{teacher.shared}/'
            f'iter_{run_study.NS_STEPS}.pth'
        ]
        for step in run.steps:
            assert step.cfg_options['randomness.seed'] == run.seed
            assert step.cfg_options['train_cfg.max_iters'] == \
                run_study.NS_STEPS
            assert osp.isfile(osp.join(REPO_ROOT, step.config))
        assert [m[0] for m in run.metrics.values()] == [
            'teacher', 'rounds/round1', 'rounds/round2'
        ]
    assert all(len(names) == 1 for names in by_seed.values())
    assert len(set.union(*by_seed.values())) == 3
    # The first two runs start two different teachers.
    assert study.runs[0].seed != study.runs[1].seed
