# The entry points. `make test` is THE test command (CI runs exactly it via .ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV := .venv
AD := $(VENV)/bin/ad-sandbox

.PHONY: bootstrap venv docker images images-if-missing test demo lint

bootstrap:
	scripts/bootstrap.sh all

venv:
	scripts/bootstrap.sh venv

# Install (if needed) and start the Docker engine.
docker:
	scripts/bootstrap.sh docker

# Build (or confirm up to date) the base and agent images; with no registry the base is
# built from Debian packages instead.
images: bootstrap
	$(AD) image build || { echo "falling back to --offline-base" >&2; $(AD) image build --offline-base; }

images-if-missing: bootstrap
	$(AD) image build --if-missing || { echo "falling back to --offline-base" >&2; \
		$(AD) image build --if-missing --offline-base; }

test: images-if-missing
	$(VENV)/bin/pytest

demo: bootstrap
	$(AD) demo

lint: venv
	$(VENV)/bin/ruff check orchestrator tests
	$(VENV)/bin/mypy
bench: images-if-missing ; $(VENV)/bin/python -m benchmarks.run $(BENCH_ARGS)
