# afb: `make demo` and `make test` are all a fresh Debian 12 machine needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Debian packages the test suite drives for real (curl as a SOCKS/HTTP client,
# nginx as a TLS-terminating reverse proxy in front of afb server; groff and man
# check the generated man pages; redis-server and haproxy for the multi-node tests,
# which start their own on loopback, never the system services; iptables for the
# fault tests' rules inside their own network namespaces: tests/userspace_netem.py).
APT_PACKAGES ?= curl ca-certificates nginx iproute2 groff-base man-db redis-server haproxy iptables
DEMO_DIR ?= demo
# `make test` runs pytest with PYTEST_ARGS on TESTS: the whole tests/ folder,
# unless PYTEST_ARGS names tests itself (make test PYTEST_ARGS=tests/test_cli.py).
PYTEST_ARGS ?=
TESTS ?= $(if $(filter tests tests/% ./tests ./tests/%,$(PYTEST_ARGS)),,tests)

.PHONY: demo test lint bench bench-throughput venv apt-deps clean test-tui-textual21 tui-demo \
	bench-tui deb deb-test test-trixie roots man

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(MAKE) --no-print-directory apt-deps APT_PACKAGES=python3-venv
	@# A C compiler and Python.h build afb's fast WebSocket masker (optional but expected).
	@$(PYTHON) -c 'import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
	  && command -v gcc >/dev/null || $(MAKE) --no-print-directory apt-deps APT_PACKAGES="gcc python3-dev"
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	@touch $@

apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

demo: venv
	$(VENV)/bin/afb demo --dir $(DEMO_DIR)

# A test that hangs fails after 300 s (pytest-timeout) instead of holding up CI.
# As root: some tests make network namespaces (ip netns) and mount namespaces.
# --durations: the 25 slowest tests at the end, to keep the suite under its 10 minutes.
test: venv apt-deps
	$(PY) -m pytest -q -p no:cacheprovider --timeout=300 --durations=25 $(PYTEST_ARGS) $(TESTS)

# The dashboard's tests again on Debian 13's python3-textual (2.1): a second venv
# pinned to textual 2.1.2, so that no newer Textual API creeps into tui/.  Without
# tests/conftest.py (--noconftest): it gevent-patches, and the TUI never runs patched.
# The snapshot tests are left out there: their SVGs are made with the newest Textual,
# whose rendering differs in details from 2.1's; the Pilot tests all run.
TEXTUAL21_VENV ?= .venv-textual21
TUI_TESTS = $(wildcard tests/test_tui_*.py)

$(TEXTUAL21_VENV)/.installed: setup.py
	$(PYTHON) -m venv $(TEXTUAL21_VENV)
	$(TEXTUAL21_VENV)/bin/pip install -q --upgrade pip
	$(TEXTUAL21_VENV)/bin/pip install -q -e . textual==2.1.2 pytest pytest-asyncio \
	  pytest-timeout pytest-textual-snapshot
	@touch $@

test-tui-textual21: $(TEXTUAL21_VENV)/.installed
	$(TEXTUAL21_VENV)/bin/python -c 'import textual; print("textual", textual.__version__)'
	$(TEXTUAL21_VENV)/bin/python -m pytest -q -p no:cacheprovider --noconftest --timeout=300 \
	  -m 'not bench and not snapshot' $(TUI_TESTS)

# The dashboard against the running `make demo`, in tmux, for a person to look at
# (start `make demo` in another terminal first; TUI_ARGS e.g. --connect demo/server.sock).
TUI_ARGS ?=
tui-demo: venv
	@command -v tmux >/dev/null || $(MAKE) --no-print-directory apt-deps APT_PACKAGES=tmux
	@ls $(DEMO_DIR)/*.sock >/dev/null 2>&1 || echo "no control socket in $(DEMO_DIR)/ yet: is \`make demo\` running? The dashboard waits for it."
	tmux new-session -A -s afb-tui '$(VENV)/bin/afb tui $(TUI_ARGS)'

# The dashboard's refresh time and CPU with 2,000 live streams (a fake daemon).
bench-tui: venv
	$(PY) bench/tui $(BENCH_ARGS)

# The linter (ruff; rules in pyproject.toml) on the code, its tests and the benchmarks.
# bench/ scripts without a .py suffix are named too (ruff skips them otherwise).
lint: venv
	$(VENV)/bin/ruff check afb tests bench $(wildcard tui) $(shell grep -l '^#!.*python' bench/* 2>/dev/null)

# afb(1) and afb.conf(5) in build/man/, as the Debian build makes them (standard
# library only: no venv needed); then e.g. man -l build/man/afb.conf.5
man:
	$(PYTHON) -m afb.manpages --out build/man

# Side by side with rival tunnels (installs them from Debian; ~25 min):
# JSON and markdown land in bench/results/.  BENCH_ARGS e.g. --size 256M --repeat 1
bench: venv apt-deps
	$(PY) bench/compare $(BENCH_ARGS)

# afb alone against a direct download (ws, wss, E2E on/off).
bench-throughput: venv apt-deps
	$(PY) bench/throughput $(BENCH_ARGS)

# Debian 13 packages, built and tested in Debian 13 roots cached in
# /var/cache/afb-build (packaging/mkroot; as root; debootstrap and
# systemd-container come from apt when missing).
ROOT_TOOLS = debootstrap systemd-container
roots:
	@$(MAKE) --no-print-directory apt-deps APT_PACKAGES="$(ROOT_TOOLS)"
	packaging/mkroot build
	packaging/mkroot boot

# afb_*.deb and afb-tui_*.deb in dist/, built by dpkg-buildpackage in the build root;
# lintian's report in dist/lintian.txt.
deb: roots
	packaging/build-deb dist

# The .debs installed in a fresh copy of the boot root, under its systemd, then
# upgraded to a rebuild with a higher version (dist/upgrade/).
deb-test: deb
	AFB_DEB_VERSION=$$(dpkg-parsechangelog -S Version 2>/dev/null || sed -n '1s/.*(\(.*\)).*/\1/p' debian/changelog)+upgradetest \
	  packaging/build-deb dist/upgrade
	packaging/deb-test dist dist/upgrade

# The test suite inside the build root against Debian 13's python3 packages.
test-trixie: roots
	packaging/test-in-root $(if $(PYTEST_ARGS),$(PYTEST_ARGS),tests)

clean:
	rm -rf $(VENV) build *.egg-info $(DEMO_DIR) dist
