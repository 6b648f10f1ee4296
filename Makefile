# carespool: the two commands of the README are the contract.
#   make run   install what is missing, build, run the daemon on ./spool
#   make test  install what is missing, check formatting, build, run every test, then the bounded
#              torture campaigns against the release binary (make torture), then the installed service
#              under a real systemd in private namespaces (make systemd-check)
#   make bench release build, throughput and latency benchmark (not part of make test);
#              BENCH_ARGS=--long adds the 10,000,000-row intake, BENCH_ARGS="--only keys" one phase
#   make install / make uninstall   the release binary (static Swift standard library), systemd units,
#              sysusers and tmpfiles files, schema, default /etc/carespool/carespool.toml (DESTDIR, PREFIX)

SWIFT        ?= swift
APT_PACKAGES := libsqlite3-dev zlib1g-dev gzip tzdata sqlite3 curl systemd make python3 python3-venv rsync openssh-client openssh-server postgresql
SPOOL        ?= spool
CONFIG       ?= /dev/null
# make run opens the HTTP routes without credentials on loopback (a route with none is closed otherwise);
# RUN_ARGS= (empty) to keep them closed, or give tokens in CONFIG.
RUN_ARGS     ?= --http-open '*'
BENCH_BUILD  := .build-release
INSTALL_BUILD := .build-install
PREFIX       ?= /usr
DESTDIR      ?=
# The binary to install; by default a release build with the Swift standard library linked statically.
BIN          ?= $(INSTALL_BUILD)/release/carespool

# The official Standard Webhooks library (PyPI's standardwebhooks) for the tests, in a virtual environment.
TEST_PYTHON  := .build/test-python

.PHONY: deps build run test test-python lint format bench clean install install-build uninstall man torture systemd-check

deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; \
		$$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing; \
	fi

build: deps
	$(SWIFT) build

run: build
	mkdir -p $(SPOOL)
	.build/debug/carespool serve --config $(CONFIG) --spool $(SPOOL) --db $(SPOOL)/carespool.sqlite3 --schema schema.json $(RUN_ARGS)

lint:
	$(SWIFT) format lint --strict --recursive Sources Tests Package.swift fuzz

format:
	$(SWIFT) format --in-place --recursive Sources Tests Package.swift fuzz

test-python: deps
	@$(TEST_PYTHON)/bin/python3 -c 'import standardwebhooks' 2>/dev/null || { \
		python3 -m venv $(TEST_PYTHON) && $(TEST_PYTHON)/bin/pip install -q standardwebhooks==1.3.0; }

test: deps lint test-python
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	$(MAKE) --no-print-directory torture
	$(MAKE) --no-print-directory systemd-check

bench: deps
	@command -v wrk >/dev/null || { if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq wrk; }
	$(SWIFT) build -c release --scratch-path $(BENCH_BUILD) --product carespool
	$(SWIFT) build -c release --scratch-path $(BENCH_BUILD) --product csv-parse-bench
	python3 bench/bench.py $(BENCH_BUILD)/release/carespool --csv-parse-bench $(BENCH_BUILD)/release/csv-parse-bench $(BENCH_ARGS)

# The torture campaigns (torture/torture.py) against the release binary: crash, disk full, inotify
# overflow, database locked, hostile drops, slow senders, fuzzing. Bounded by default (under 5 minutes: 200 kills,
# the four fuzz targets side by side for 60 s); TORTURE_ARGS=--full for the long form. Part of make test.
TORTURE_ARGS ?=
torture: deps
	$(SWIFT) build -c release --scratch-path $(BENCH_BUILD) --product carespool
	python3 torture/torture.py $(BENCH_BUILD)/release/carespool $(TORTURE_ARGS)

# The installed service under a real systemd with every setting of systemd/carespool.service in force:
# systemd/check.py boots systemd as PID 1 of private namespaces (overlays on /etc, /var, /usr/local:
# the host is not changed), runs make install there and checks readiness, the sandbox, files, HTTP,
# reload, journal, watchdog, restart after kill -9, stop, socket activation, a bad config. Needs root.
systemd-check: deps
	$(SWIFT) build -c release --scratch-path $(BENCH_BUILD) --product carespool
	python3 systemd/check.py $(BENCH_BUILD)/release/carespool

# docs/carespool.1 from the argument parser (swift-argument-parser's generate-manual plugin).
man: deps
	$(SWIFT) package --disable-sandbox plugin generate-manual
	cp .build/plugins/GenerateManual/outputs/carespool/carespool.1 docs/carespool.1

install-build: deps
	$(SWIFT) build -c release --static-swift-stdlib --scratch-path $(INSTALL_BUILD) --product carespool

# Installs into $(DESTDIR)$(PREFIX); an existing /etc/carespool/carespool.toml is never replaced. Without
# DESTDIR, also creates the user and the spool (systemd-sysusers, systemd-tmpfiles) and reloads systemd.
install: $(if $(filter $(INSTALL_BUILD)/%,$(BIN)),install-build)
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/carespool
	sed 's|/usr/bin/carespool|$(PREFIX)/bin/carespool|g' systemd/carespool.service > carespool.service.tmp
	install -D -m 0644 carespool.service.tmp $(DESTDIR)$(PREFIX)/lib/systemd/system/carespool.service
	rm -f carespool.service.tmp
	install -D -m 0644 systemd/carespool.socket $(DESTDIR)$(PREFIX)/lib/systemd/system/carespool.socket
	install -D -m 0644 systemd/carespool.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/carespool.conf
	install -D -m 0644 systemd/carespool.tmpfiles $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/carespool.conf
	install -D -m 0644 schema.json $(DESTDIR)$(PREFIX)/share/carespool/schema.json
	install -D -m 0644 docs/carespool.1 $(DESTDIR)$(PREFIX)/share/man/man1/carespool.1
	install -D -m 0644 docs/OPERATIONS.md $(DESTDIR)$(PREFIX)/share/doc/carespool/OPERATIONS.md
	sed 's|/usr/share/carespool/schema.json|$(PREFIX)/share/carespool/schema.json|' config/carespool.toml > carespool.toml.tmp
	[ -e $(DESTDIR)/etc/carespool/carespool.toml ] || install -D -m 0640 carespool.toml.tmp $(DESTDIR)/etc/carespool/carespool.toml
	rm -f carespool.toml.tmp
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemd-sysusers $(PREFIX)/lib/sysusers.d/carespool.conf; \
		systemd-tmpfiles --create $(PREFIX)/lib/tmpfiles.d/carespool.conf; \
		chgrp carespool /etc/carespool/carespool.toml; \
		systemctl daemon-reload; \
		echo "installed; start with: systemctl enable --now carespool"; \
	fi

# Removes what install put in place, except /etc/carespool/carespool.toml when it was changed, the
# spool and the database (an operator's data is never removed by make).
uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/carespool
	rm -f $(DESTDIR)$(PREFIX)/lib/systemd/system/carespool.service $(DESTDIR)$(PREFIX)/lib/systemd/system/carespool.socket
	rm -f $(DESTDIR)$(PREFIX)/lib/sysusers.d/carespool.conf $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/carespool.conf
	rm -rf $(DESTDIR)$(PREFIX)/share/carespool $(DESTDIR)$(PREFIX)/share/doc/carespool
	rm -f $(DESTDIR)$(PREFIX)/share/man/man1/carespool.1
	sed 's|/usr/share/carespool/schema.json|$(PREFIX)/share/carespool/schema.json|' config/carespool.toml > carespool.toml.tmp
	if cmp -s carespool.toml.tmp $(DESTDIR)/etc/carespool/carespool.toml; then \
		rm -f $(DESTDIR)/etc/carespool/carespool.toml; rmdir $(DESTDIR)/etc/carespool 2>/dev/null || true; \
	else \
		echo "kept $(DESTDIR)/etc/carespool/carespool.toml (changed since install)"; \
	fi
	rm -f carespool.toml.tmp
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi

clean:
	rm -rf .build $(BENCH_BUILD) $(INSTALL_BUILD) .build-fuzz
