# `make demo` and `make test` create .venv from the repository's own files
# (idempotent: the environment is rebuilt only when requirements change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
REQS := setup.py requirements/constraints.txt requirements/runtime.txt \
        requirements/mminstall.txt requirements/tests.txt requirements/demo.txt
PYTEST_ARGS ?=

.PHONY: env demo demo-byol demo-seeds test benchmark clean

env: $(STAMP)

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements/constraints.txt \
		"setuptools<82" wheel
	$(PY) -m pip install --quiet -c requirements/constraints.txt \
		-e ".[all]"
	touch $(STAMP)

# FixMatch on scikit-learn's digits, 40 labels: TMA vs STS teacher, seeds
# 0-2, each run a deterministic single-threaded process, two at a time
# (CPU; resumes with the runs it has finished).
demo: $(STAMP)
	$(PY) tools/demo/fixmatch_digits.py --work-dir work_dirs/demo/fixmatch

# BYOL on the digits, TMA vs STS, each with linear probes (CPU).
demo-byol: $(STAMP)
	$(PY) tools/demo/byol_digits.py --work-dir work_dirs/demo/byol

# The FixMatch comparison over seeds 0-4 with TMA, SE and STS (long), with
# the machinery of `make demo`, whose finished runs it reuses.
demo-seeds: $(STAMP)
	$(PY) tools/demo/fixmatch_digits_seeds.py --work-dir work_dirs/demo/fixmatch

test: $(STAMP)
	$(PY) -m pytest tests $(PYTEST_ARGS)

benchmark: $(STAMP)
	$(PY) tools/benchmarks/benchmark_update.py

.PHONY: data-fashion-mnist

# Fashion-MNIST's four idx files in data/fashion_mnist, from Debian's
# dataset-fashion-mnist package (installed with apt-get when root); the
# script needs only python3's standard library.
data-fashion-mnist:
	$(PYTHON) tools/dataset_converters/prepare_fashion_mnist.py \
		--out data/fashion_mnist

.PHONY: gpu-check

# The checks for the first GPU machine (< 8 min on one GPU): the update
# benchmark on CUDA, BYOL step time with/without STS, no host-device sync in
# the teacher update, and the tests that need CUDA. Prints "skipped: no
# CUDA" where there is none.
gpu-check: $(STAMP)
	PYTHON=$(PY) bash tools/benchmarks/gpu_check.sh

clean:
	rm -rf $(VENV) work_dirs .pytest_cache

.PHONY: study-fixmatch study-byol study-ablation study-kd \
        study-noisy-student studies

# The Fashion-MNIST studies of STS (docs/studies.md): each runs two
# single-threaded training processes at a time (in .venv, created if needed),
# is resumable (run it again after an interruption) and writes
# work_dirs/studies/<study>.md|json|png.
# FixMatch: 30 runs, ~85 min on 2 idle cores.
study-fixmatch: $(STAMP) data-fashion-mnist
	$(PY) tools/studies/run_study.py fixmatch --jobs 2

# BYOL, TMA vs STS vs SE, with linear probes: 9 pretrainings, ~60 min.
study-byol: $(STAMP) data-fashion-mnist
	$(PY) tools/studies/run_study.py byol --jobs 2

# p and granularity of STS (FixMatch-MT, 40 labels): 15 new runs, ~45 min.
study-ablation: $(STAMP) data-fashion-mnist
	$(PY) tools/studies/run_study.py ablation --jobs 2

# Knowledge distillation under strong augmentation (configs/kd/README.md):
# 15 trainings (12 students, 3 teachers), ~40 min on 2 idle cores.
study-kd: $(STAMP) data-fashion-mnist
	$(PY) tools/studies/run_study.py kd --jobs 2

# Noisy Student, 2 rounds, student smoothed by STS / EMA / not at all
# (configs/noisy_student/README.md): 3 teachers + 18 students of 1,000 steps
# and 18 pseudo-labelings of the 60,000 images, ~43 min on 2 idle cores.
study-noisy-student: $(STAMP) data-fashion-mnist
	$(PY) tools/studies/run_study.py noisy_student --jobs 2

# The three STS studies, ~3 h 5 min on 2 idle cores (docs/studies.md has
# the sizing).
studies: study-fixmatch study-byol study-ablation
