# senet-ablate: `make demo` and `make test` each set up everything on a fresh machine by themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test e2e faults slurm slurm-test lint bench gpu-kit gpu-check data postgres browser clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Debian's dataset-fashion-mnist is the embedded default data; install it when apt is there and it is missing.
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "note: no apt-get; give Fashion-MNIST with --set data.root=DIR"; fi

# The multi-host tests start a throwaway PostgreSQL cluster on 127.0.0.1 from Debian's binaries.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq postgresql >/dev/null; \
	else echo "note: no apt-get; the PostgreSQL tests will skip and say why"; fi

# The Slurm tests start a throwaway one-node cluster (munged, slurmctld, slurmd) in a temporary folder from Debian's
# binaries; nothing is installed as a service and nothing runs once the tests end.
slurm:
	@if command -v slurmctld >/dev/null 2>&1 && command -v munged >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq slurm-wlm munge >/dev/null; \
	else echo "note: no apt-get; the Slurm tests will skip and say why"; fi

# The UI and report.html cases load pages in headless Chromium (Debian's package).
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; \
	else echo "note: no apt-get; the browser cases will skip and say why"; fi

lint: $(VENV)/.installed
	$(VENV)/bin/ruff format --check senet_core ablations tests benchmarks
	$(VENV)/bin/ruff check senet_core ablations tests benchmarks
	$(VENV)/bin/mypy senet_core

test: $(VENV)/.installed data postgres lint
	$(PY) -m pytest -q --durations=15 -m "not faults and not gpu and not kit and not e2e and not slurm"

# End-to-end cases kept out of `make test` (about 6 minutes): the GPU kit (it downloads the kit's wheels from PyPI)
# built for three Pythons, installed with pip and without, and the harness sweeping from it on a Python with only
# the GPU host's packages; and long sweeps in subprocesses (a stalled read, the UI, read-only folders, packing).
e2e: $(VENV)/.installed data postgres browser
	$(PY) -m pytest -q -m "(kit or e2e) and not slurm"

# Seeded rounds of kills, pauses, races and store faults per ledger backend, and the dedicated fault cases (about
# 12 minutes on 2 cores; as root the SQLite rounds fill a small tmpfs); CI runs it after `make test`.
faults: $(VENV)/.installed data postgres
	$(PY) -m pytest -q -s -m "faults and not slurm"

# The real one-node Slurm cluster and submitit driving it: GPU jobs on stand-in devices, job arrays, preemption and
# requeue between partitions; then `--launcher slurm` end to end: a study through arrays, a task cancelled, preempted
# and at its time limit, the controller killed, shared trials, cancel, Ctrl-C, chunks, a PostgreSQL ledger; then a
# two-node cluster (two slurmd on this host) for DDP groups over nodes: a two-node trial, a rank killed on the second
# node, a preempted group (about 15 minutes; as root, since the daemons run as SlurmUser=root).
slurm-test: $(VENV)/.installed slurm postgres
	$(PY) -m pytest -q -m slurm

demo: $(VENV)/.installed data
	$(VENV)/bin/senet-ablate sweep demo --workers 2

bench: $(VENV)/.installed data
	$(PY) -m pip install -q -e '.[dev,bench]'
	$(PY) -m benchmarks.run

# What a GPU host without network needs beside the checkout, built here (README, "A GPU host"): the wheels its
# Python lacks (3.11-3.13) and Fashion-MNIST in results/gpu-kit, under 56 MiB; it prints the one command for the host.
gpu-kit: $(VENV)/.installed data
	$(PY) -m benchmarks.kit

# On a GPU host without network: no virtual environment is built; the host's Python runs everything from this
# checkout, with the kit that `make gpu-kit` wrote (KIT=results/gpu-kit, carried beside the checkout) installed
# first. FASHION=DIR gives Fashion-MNIST when neither the kit nor Debian's folder has it.
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	PYTHONPATH=.$${PYTHONPATH:+:$$PYTHONPATH} $(GPU_PY) -m benchmarks.gpu_check $(if $(KIT),--kit $(KIT)) $(if $(FASHION),--data $(FASHION))

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
