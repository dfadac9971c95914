# The commands a newcomer runs: `make run` (set up + serve) and `make test` (set up + test).
.PHONY: setup test lint bench run demo clean

setup:
	./scripts/setup.sh

test: setup
	.venv/bin/python -m pytest

# Style, formatting (of the packages; tests keep their hand layout), the layers as import
# contracts (pyproject.toml [tool.importlinter]) and types (mypy, [tool.mypy]).
PACKAGES = protocols geo store ingest alerts maps fleetwatch loadtest
lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check $(PACKAGES)
	.venv/bin/lint-imports
	.venv/bin/mypy

bench: setup
	.venv/bin/python -m loadtest.bench_codec
	.venv/bin/python -m loadtest.bench_fences
	.venv/bin/python -m loadtest.bench_rules
	.venv/bin/python -m loadtest.bench_flush
	.venv/bin/python -m loadtest.bench_gateway

# The main command: JT/T 808 on 6808, NMEA on 6809, the dashboard and /metrics on 8080, embedded PostGIS in ./data.
run: setup
	@echo "dashboard: http://127.0.0.1:8080/  (first user: .venv/bin/fleetwatch users add admin --role admin --data-dir data)"
	.venv/bin/fleetwatch serve --data-dir data --jt808-port 6808 --nmea-port 6809 --http-port 8080

clean:
	rm -rf .venv *.egg-info .pytest_cache .hypothesis

# A first look: the server on its embedded PostGIS in ./demo-data with ~200 simulated vehicles in
# Changsha (a day of driving played in 10 minutes, then live), demo logins printed; Ctrl-C stops all.
demo: setup
	.venv/bin/fleetwatch demo --data-dir demo-data
