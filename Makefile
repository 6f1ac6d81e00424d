# stockade: `make demo` and `make test` do all set-up on a fresh Debian 12 machine (as root).
SHELL := /bin/bash
VENV := .venv
CACHE := .cache
# Debian's python3 (built with PGO and LTO, libpython linked in): our Python runs ~25% faster on
# it than on a plain source build such as pyenv's, and starts ~1 ms sooner. Otherwise the real
# interpreter behind python3, not a pyenv shim (a shim adds ~15 ms to every call).
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || python3 -c 'import sys; print(sys.executable)')
DEB_PACKAGES := busybox-static crun runc podman conmon uidmap hyperfine iproute2 procps gcc libc6-dev \
                libseccomp2 catatonit fuse-overlayfs containernetworking-plugins qemu-system-x86 strace \
                skopeo umoci debootstrap docker-registry apache2-utils zstd openssl \
                nftables iperf3 passt slirp4netns python3 python3-venv passwd util-linux
APT_STAMP := $(CACHE)/apt-$(shell echo $(DEB_PACKAGES) | md5sum | cut -c1-8).stamp
VENV_STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | md5sum | cut -c1-8)
PYTEST_ARGS ?=

.PHONY: setup apt venv demo test test-cgroup-v2 test-unit bench lint clean

setup: apt venv

apt: $(APT_STAMP)
$(APT_STAMP):
	@mkdir -p $(CACHE)
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(DEB_PACKAGES) >/dev/null; \
	else \
		missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(DEB_PACKAGES) 2>&1 | grep -v 'install ok installed' | cut -d' ' -f1); \
		if [ -n "$$missing" ]; then echo "make setup: as root, or install: $$missing"; exit 1; fi; \
	fi
	@touch $@

venv: $(VENV_STAMP)
$(VENV_STAMP): pyproject.toml bin/stockade bin/stockade-runtime
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	@# Byte-compile now: the runtime starts many times per container, and some environments
	@# set PYTHONDONTWRITEBYTECODE, which would make every start recompile what changed.
	$(VENV)/bin/python -m compileall -q src
	@rm -f $(VENV)/.installed-*; touch $@

demo: setup
	@bash scripts/demo.sh

test: setup
	$(VENV)/bin/python -m compileall -q src
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS) tests

test-cgroup-v2: setup
	$(VENV)/bin/python scripts/cgroup_v2_vm.py

test-unit: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/unit

bench: setup
	@# docker.io only for the engine benchmark's comparison (dockerd is started and stopped by it)
	@if [ "$$(id -u)" = 0 ] && ! command -v dockerd >/dev/null; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null; fi
	$(VENV)/bin/python -m compileall -q src
	$(VENV)/bin/python bench/runtime_bench.py
	$(VENV)/bin/python bench/seccomp_bench.py
	$(VENV)/bin/python bench/image_bench.py
	$(VENV)/bin/python bench/engine_bench.py
	$(VENV)/bin/python bench/network_bench.py

lint: venv
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf $(CACHE) build *.egg-info src/*.egg-info
