"""FixMatch on the digits over 5 seeds: TMA, SE and STS teachers.

The longer sweep of ``tools/demo/fixmatch_digits.py`` (same deterministic,
single-threaded, resumable runs, same tables), with seeds 0-4 and the SE
teacher (Spatial Ensemble alone) besides TMA and STS. With the demo's work
dir it reuses the runs ``make demo`` has finished. Any option of
``fixmatch_digits.py`` overrides these defaults.

Example (``make demo-seeds``; 15 runs of 500 steps, two at a time):
    python tools/demo/fixmatch_digits_seeds.py \\
        --work-dir work_dirs/demo/fixmatch
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import fixmatch_digits  # noqa: E402

DEFAULTS = ['--seeds', '0', '1', '2', '3', '4',
            '--variants', 'TMA', 'SE', 'STS']


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    # argparse keeps the last value of an option: the caller's win.
    return fixmatch_digits.main(DEFAULTS + argv)


if __name__ == '__main__':
    main()
