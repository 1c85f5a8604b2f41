# offsite — build, run, test and benchmark. Every target installs what it is missing.
SHELL := /bin/bash
.DEFAULT_GOAL := build

NODE_BIN := node_modules/.bin
DATA ?= run-data
VOLUME ?= vol1:1G
ISCSI ?= 127.0.0.1:3260
HTTP ?= 127.0.0.1:9464

# Debian packages: real initiators for the tests, tgt for side-by-side comparison, Prometheus
# (promtool and a real server for the metrics tests) and docker-compose (compose file validation).
TEST_PKGS := libiscsi-bin qemu-utils qemu-block-extra tgt prometheus docker-compose openssl
BENCH_PKGS := $(TEST_PKGS) lz4
# Intel's ISA-L, for the CRC32C addon (journal records, replication frames, iSCSI digests);
# liblz4, for the addon that (de)compresses replication payloads into pooled buffers.
BUILD_PKGS := libisal-dev liblz4-dev

.PHONY: test-faults test-load build run test bench deps sysdeps-build sysdeps-test sysdeps-bench clean test-unit test-integration

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

deps: node_modules/.installed

# apt-get only what is missing (dpkg-query tells), updating the package lists once first.
define apt_install
	@missing=""; for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

sysdeps-build:
	$(call apt_install,$(BUILD_PKGS))

sysdeps-test:
	$(call apt_install,$(TEST_PKGS))

sysdeps-bench:
	$(call apt_install,$(BENCH_PKGS))

build: deps native/build/blockio.node native/build/crc32c.node native/build/lz4block.node native/build/records.node
	rm -rf dist/test
	$(NODE_BIN)/tsc -p tsconfig.json

# A primary and a replica on loopback with one default volume, replicating over TLS (a link key
# and an admin token are made under $(DATA) the first time). Ctrl-C stops both.
REPLICA_ISCSI ?= 127.0.0.1:3261
REPLICA_HTTP ?= 127.0.0.1:9465
REPLICATION ?= 127.0.0.1:7700
OFFSITE := node dist/src/cli/main.js
run: build sysdeps-test
	@mkdir -p $(DATA) && chmod 700 $(DATA)
	@test -f $(DATA)/link.key || $(OFFSITE) keygen --link-key $(DATA)/link.key
	@test -f $(DATA)/admin.token || $(OFFSITE) keygen --admin-token $(DATA)/admin.token
	@echo "offsite: primary serves $(VOLUME) on iSCSI $(ISCSI) (HTTP $(HTTP)); replica on iSCSI $(REPLICA_ISCSI) (HTTP $(REPLICA_HTTP)), link $(REPLICATION)"
	@echo "  discover:  iscsi-ls -s iscsi://$(ISCSI)"
	@echo "  use:       qemu-io -f raw -c 'write -P 0x5a 0 1M' iscsi://$(ISCSI)/iqn.2026-11.dev.offsite:$(firstword $(subst :, ,$(VOLUME)))/0"
	@echo "  replica:   qemu-io -r -f raw -c 'read -P 0x5a 0 1M' iscsi://$(REPLICA_ISCSI)/iqn.2026-11.dev.offsite:$(firstword $(subst :, ,$(VOLUME)))/0"
	@echo "  status:    $(OFFSITE) status --http $(HTTP)   (replica: --http $(REPLICA_HTTP))"
	@$(OFFSITE) serve --role replica --data $(DATA)/replica --iscsi $(REPLICA_ISCSI) --http $(REPLICA_HTTP) \
	    --replication-listen $(REPLICATION) --link-key $(DATA)/link.key --admin-token-file $(DATA)/admin.token & \
	  replica=$$!; trap 'kill $$replica 2>/dev/null; wait $$replica' EXIT INT TERM; \
	  $(OFFSITE) serve --data $(DATA)/primary --volume $(VOLUME) --iscsi $(ISCSI) --http $(HTTP) \
	    --replicate-to $(REPLICATION) --link-key $(DATA)/link.key --admin-token-file $(DATA)/admin.token

# Every compiled *.test.js under dist/test (unit, integration against real initiators, conformance).
test: build sysdeps-test
	node --test --test-timeout=600000 $$(find dist/test -name '*.test.js' | sort)

# The long proof run (issue 6): the fault campaign (FAULTS injected faults, seed printed), the fuzz
# suite (FUZZ_RUNS inputs) and the load run (16 sessions x 8 volumes x LOAD_MINUTES), then one
# summary; exit 1 on any loss, non-prefix state, crash, fuzz failure or load error. 0 skips a phase.
# Then SPLIT_BRAIN_ROUNDS random rounds of partitions and pauses with a witness: never two
# writable sites (0 skips them).
FAULTS ?= 1000
FUZZ_RUNS ?= 1000000
LOAD_MINUTES ?= 10
SPLIT_BRAIN_ROUNDS ?= 30
test-faults: build sysdeps-test
	node dist/test/faults/long.js --faults $(FAULTS) --fuzz-runs $(FUZZ_RUNS) --load-minutes $(LOAD_MINUTES) $(if $(SEED),--seed $(SEED))
	$(if $(filter-out 0,$(SPLIT_BRAIN_ROUNDS)),OFFSITE_SPLIT_BRAIN_ROUNDS=$(SPLIT_BRAIN_ROUNDS) $(if $(SEED),OFFSITE_SPLIT_BRAIN_SEED=$(SEED)) node --test --test-timeout=3600000 --test-name-pattern='random rounds' dist/test/integration/split-brain.test.js)

# The long load run (issue 6): 16 sessions over 8 volumes for 10 minutes while replicating.
test-load: build sysdeps-test
	node dist/test/faults/load-long.js

bench: build sysdeps-bench
	node dist/bench/run.js

clean:
	rm -rf dist

# The N-API addon for hole punching (thin volumes); node's headers come with Debian's nodejs or node itself.
NODE_INCLUDE := $(firstword $(wildcard /usr/include/node $(dir $(shell command -v node))../include/node))
native/build/blockio.node: native/blockio.c
	@mkdir -p native/build
	cc -O2 -Wall -shared -fPIC -DNODE_GYP_MODULE_NAME=blockio -I$(NODE_INCLUDE) $< -o $@

# CRC32C from ISA-L (a separate addon: without the library only speed is lost).
native/build/crc32c.node: native/crc32c.c | sysdeps-build
	@mkdir -p native/build
	cc -O2 -Wall -shared -fPIC -DNODE_GYP_MODULE_NAME=crc32c -I$(NODE_INCLUDE) $< -o $@ -lisal

# The journal's group-commit write: record checksums (ISA-L) and one pwritev per batch.
native/build/records.node: native/records.c | sysdeps-build
	@mkdir -p native/build
	cc -O2 -Wall -shared -fPIC -DNODE_GYP_MODULE_NAME=records -I$(NODE_INCLUDE) $< -o $@ -lisal

# LZ4 blocks into caller-supplied buffers, from liblz4 (without it, lz4-napi does the work).
native/build/lz4block.node: native/lz4block.c | sysdeps-build
	@mkdir -p native/build
	cc -O2 -Wall -shared -fPIC -DNODE_GYP_MODULE_NAME=lz4block -I$(NODE_INCLUDE) $< -o $@ -llz4
