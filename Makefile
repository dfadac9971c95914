# The commands a newcomer runs: `make run` (set up + serve) and `make test` (set up + test).
.PHONY: setup test lint bench run clean

setup:
	./scripts/setup.sh

test: setup
	.venv/bin/python -m pytest

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/python -m loadtest.bench_codec

run: setup
	.venv/bin/fleetwatch --help

clean:
	rm -rf .venv *.egg-info .pytest_cache .hypothesis
