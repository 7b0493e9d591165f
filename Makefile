# kiln: every entry point people and CI use. `make image` and `make test`
# install what they need first (apt packages, QEMU, rust targets).

SHELL := /bin/bash
CARGO ?= cargo
PROFILE ?= profiles/qemu.toml
OUT ?= out
ARCH ?= x86_64
# Caches outside the clone, kept between runs and between clones (CI keeps them): the
# .deb and artifact cache (kiln reads KILN_CACHE), the QEMU tests' image cache inside it,
# and cargo's target folder. A fresh clone then compiles only kiln's own crates.
KILN_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/kiln
CARGO_TARGET_DIR ?= $(KILN_CACHE)/cargo-target
export KILN_CACHE CARGO_TARGET_DIR
KILN := $(CARGO_TARGET_DIR)/release/kiln
# make install: where kiln, its agents, overlays, profiles, man pages and shell
# completions go (DESTDIR is prepended, for packaging).
PREFIX ?= /usr/local
DESTDIR ?=

.PHONY: all deps deps-build deps-run agent kiln enroll lock image run install test docs check fmt bench repro clean

all: image

## deps: everything the test suite needs: apt packages, QEMU (backports), the musl rust targets
deps:
	@bash scripts/deps.sh test

## deps-build: only what building images needs (the agent's cross compilers, musl targets)
deps-build:
	@bash scripts/deps.sh build

## deps-run: building plus QEMU and the UEFI firmware (`make run`)
deps-run:
	@bash scripts/deps.sh run

## agent: the static in-image binary, for both arches (one cargo run for both targets:
## their single-threaded LTO links run side by side), with the build paths remapped so
## its bytes do not depend on who builds it where; `make test` builds it with the same
## script (scripts/agent.sh)
agent:
	CARGO=$(CARGO) bash scripts/agent.sh -q

## kiln: the builder CLI
kiln:
	$(CARGO) build --locked -q --release -p kiln

## enroll: the kiln-enroll server ($(CARGO_TARGET_DIR)/release/kiln-enroll)
enroll:
	$(CARGO) build --locked -q --release -p kiln-enroll

## lock: refresh the default profile's lock (new package versions)
lock: deps-build kiln
	$(KILN) lock --update $(PROFILE)

## image: build the default image for x86_64 and arm64 into out/
image: deps-build agent kiln
	$(KILN) build $(PROFILE) --arch all --out $(OUT)

## run: boot the default image in QEMU (ARCH=x86_64|arm64); Ctrl-A X quits
run: deps-run image
	$(KILN) run $(OUT)/$$(sed -n 's/^name = "\(.*\)"/\1/p' $(PROFILE))-$(ARCH).raw

## install: kiln in $(PREFIX)/bin with what it finds beside it: the agents
## ($(PREFIX)/lib/kiln/<musl triple>/kiln-agent), the shipped overlays and profiles
## ($(PREFIX)/share/kiln/{overlays,profiles}), man pages (share/man/man1) and the
## bash, zsh and fish completions
install: deps-build agent kiln
	@set -e; d="$(DESTDIR)$(PREFIX)"; \
	install -Dm755 $(KILN) "$$d/bin/kiln"; \
	for t in x86_64-unknown-linux-musl aarch64-unknown-linux-musl; do \
	  install -Dm755 $(CARGO_TARGET_DIR)/$$t/agent/kiln-agent "$$d/lib/kiln/$$t/kiln-agent"; \
	done; \
	rm -rf "$$d/share/kiln/overlays" "$$d/share/kiln/profiles"; \
	mkdir -p "$$d/share/kiln"; \
	cp -R --no-preserve=ownership overlays "$$d/share/kiln/overlays"; \
	cp -R --no-preserve=ownership profiles "$$d/share/kiln/profiles"; \
	$(KILN) man --out "$$d/share/man/man1" -q; \
	install -d "$$d/share/bash-completion/completions" "$$d/share/zsh/site-functions" \
	  "$$d/share/fish/vendor_completions.d"; \
	$(KILN) completions bash > "$$d/share/bash-completion/completions/kiln"; \
	$(KILN) completions zsh > "$$d/share/zsh/site-functions/_kiln"; \
	$(KILN) completions fish > "$$d/share/fish/vendor_completions.d/kiln.fish"; \
	echo "installed kiln in $$d/bin (agents, overlays, profiles, man pages, completions beside it)"

## test: the whole suite, QEMU boot tests of both arches included; ends with the
## compile time, each test binary's time and the slowest QEMU scenarios
test: deps
	$(CARGO) run --locked --release -q -p xtask -- test --threads 2

## docs: write the book's CLI reference (docs/src/reference/cli.md) from the programs'
## --help and check the docs' links (`make test` fails when the page is stale)
docs:
	$(CARGO) run --locked --release -q -p xtask -- docs

## check: formatting and lints
check:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	$(CARGO) clippy --locked -p kiln-agent --target x86_64-unknown-linux-musl -- -D warnings

fmt:
	$(CARGO) fmt --all

## bench: build and boot timings and sizes into BENCHMARKS.md
bench: deps agent kiln enroll
	bash scripts/bench.sh

## repro: build the agent twice (other checkout folder, target folder and cargo home) and
## compare the binaries, then the images twice (other cache, out, TMPDIR, umask, time)
## with that agent, and compare sha256s
repro: deps agent kiln
	KILN=$(KILN) bash scripts/repro.sh

clean:
	$(CARGO) clean
	rm -rf $(OUT)
