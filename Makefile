# carespool: the two commands of the README are the contract.
#   make run   install what is missing, build, run the daemon on ./spool
#   make test  install what is missing, check formatting, build, run every test
#   make bench release build, throughput and latency benchmark (not part of make test)

SWIFT        ?= swift
APT_PACKAGES := libsqlite3-dev sqlite3 curl
SPOOL        ?= spool
BENCH_BUILD  := .build-release

.PHONY: deps build run test lint format bench clean

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
	.build/debug/carespool serve --spool $(SPOOL) --db $(SPOOL)/carespool.sqlite3 --schema schema.json

lint:
	$(SWIFT) format lint --strict --recursive Sources Tests Package.swift

format:
	$(SWIFT) format --in-place --recursive Sources Tests Package.swift

test: deps lint
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build

bench: deps
	@command -v wrk >/dev/null || { if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi; $$sudo apt-get install -y -qq wrk; }
	$(SWIFT) build -c release --scratch-path $(BENCH_BUILD) --product carespool
	$(SWIFT) build -c release --scratch-path $(BENCH_BUILD) --product csv-parse-bench
	python3 bench/bench.py $(BENCH_BUILD)/release/carespool --csv-parse-bench $(BENCH_BUILD)/release/csv-parse-bench

clean:
	rm -rf .build $(BENCH_BUILD)
