# qrpc: the two commands most people need are
#
#   make run    install what is missing, build, and run the echo, hello,
#               game and chat demos
#   make test   install what is missing, build, and run every test twice:
#               as built, and under AddressSanitizer + UBSan
#
# The real build is CMake; this file only strings the steps together.
# Run `make help` for the other targets.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help
# Keep the output of the nested builds free of "Entering directory" lines.
MAKEFLAGS += --no-print-directory

BUILD_DIR   ?= build
SAN_DIR     ?= build-san
TSAN_DIR    ?= build-tsan
GNUTLS_DIR  ?= build-gnutls
CERT_DIR    ?= $(BUILD_DIR)/certs
PREFIX      ?= /usr/local
JOBS        ?= $(shell nproc 2>/dev/null || echo 2)
# End-to-end tests use loopback UDP and real timers: two at a time keeps
# them from starving each other on a small machine.
CTEST_JOBS  ?= 2
CMAKE_FLAGS ?=
CTEST       := ctest --output-on-failure --no-tests=error -j$(CTEST_JOBS)
SAN_ENV     := ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
               UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# Seconds the demo may take before it is stopped.
RUN_TIMEOUT ?= 60

.PHONY: help setup build build-san build-gnutls certs run test test-tsan install clean

# List the targets.
help:
	@echo "make run       set up, build, make certificates and run the echo, hello, game and chat demos"
	@echo "make test      set up, build and run all tests (normal and sanitizer builds)"
	@echo "make setup     install the Debian packages qrpc needs (uses sudo if not root) and build the"
	@echo "               OpenSSL backend's libraries once if the system lacks them (cached, see README)"
	@echo "make build     configure and build into $(BUILD_DIR)/"
	@echo "make build-san the same with ASan + UBSan, into $(SAN_DIR)/"
	@echo "make build-gnutls  the same on the GnuTLS backend, into $(GNUTLS_DIR)/"
	@echo "make test-tsan the suites with threads (server workers) under ThreadSanitizer, in $(TSAN_DIR)/"
	@echo "make certs     make development certificates in $(CERT_DIR)/ if missing"
	@echo "make install   install into PREFIX (now $(PREFIX)), e.g. make install PREFIX=\$$HOME/.local"
	@echo "make clean     remove $(BUILD_DIR)/ and $(SAN_DIR)/ (the cached OpenSSL build stays)"

# Install the compilers and libraries, and build the OpenSSL backend's
# private prefix when needed (fast when everything is present).
setup:
	JOBS=$(JOBS) bash scripts/setup.sh

# Configure and build the library, tests and examples.
build: setup
	cmake -S . -B $(BUILD_DIR) $(CMAKE_FLAGS)
	cmake --build $(BUILD_DIR) -j$(JOBS)

# The same with AddressSanitizer and UndefinedBehaviorSanitizer, compiled
# with clang, so every run of `make test` builds warning-free with both gcc
# and clang.
build-san: setup
	CC=clang cmake -S . -B $(SAN_DIR) -DQRPC_SANITIZE=ON $(CMAKE_FLAGS)
	cmake --build $(SAN_DIR) -j$(JOBS)

# The second TLS backend, GnuTLS: make test runs its end-to-end suites and
# its peers against the default (OpenSSL) build's.
build-gnutls: setup
	cmake -S . -B $(GNUTLS_DIR) -DQRPC_TLS=gnutls $(CMAKE_FLAGS)
	cmake --build $(GNUTLS_DIR) -j$(JOBS)

# The suites where qrpc runs on several threads (a server's workers, and
# the metrics and snapshots that cross them) under ThreadSanitizer, in a
# clang build of their own (make test runs it too). Only qrpc's code is
# instrumented (libevent, ngtcp2 and the TLS library are Debian's), so a
# report is about qrpc.
TSAN_SUITES := test_rpc_workers test_metrics test_dgram_snapshot test_broker_workers
test-tsan: setup
	CC=clang cmake -S . -B $(TSAN_DIR) -DQRPC_TSAN=ON $(CMAKE_FLAGS) >/dev/null
	cmake --build $(TSAN_DIR) -j$(JOBS) --target $(TSAN_SUITES)
	TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  $(CTEST) --test-dir $(TSAN_DIR) -R '^($(subst $(eval) ,|,$(TSAN_SUITES)))$$'

# Development CA and localhost server certificate (kept if present).
certs: setup
	bash scripts/gen-certs.sh $(CERT_DIR)

# Run each demo: start its server on a free loopback port, run its client
# against it, stop the server, and fail if the client failed. First echo
# (raw streams and datagrams), then hello (typed RPC stubs generated from
# examples/hello/hello.proto), then game (examples/game/game.proto: a
# server ticking at 60 Hz that broadcasts the world as datagrams, and 20
# headless clients measuring it for 3 seconds), then chat (the qrpc-broker
# daemon, and `chat --demo 5`: five users in one room who each send three
# messages and check that everyone got all of them once and in order).
run: build certs
	@out=$$(mktemp -d)
	server_pid=
	server_name=
	port=
	stop_server() {
	  [ -n "$$server_pid" ] || return 0
	  kill -TERM "$$server_pid" 2>/dev/null || true
	  for _ in $$(seq 50); do
	    kill -0 "$$server_pid" 2>/dev/null || break
	    sleep 0.1
	  done
	  if kill -0 "$$server_pid" 2>/dev/null; then
	    echo "demo: $$server_name ignored SIGTERM; killing it"
	    kill -KILL "$$server_pid" 2>/dev/null || true
	  fi
	  server_status=0
	  wait "$$server_pid" || server_status=$$?
	  server_pid=
	  echo "demo: $$server_name output (exit status $$server_status):"
	  sed 's/^/  | /' "$$out/$$server_name.log"
	}
	# start_server NAME [PATH]: starts PATH (default examples/NAME), sets
	# port from its READY line.
	start_server() {
	  server_name=$$1
	  echo "demo: starting $$server_name on 127.0.0.1, port chosen by the system"
	  $${2:-$(BUILD_DIR)/examples/$$server_name} \
	    --listen 127.0.0.1:0 \
	    --cert $(CERT_DIR)/server.pem --key $(CERT_DIR)/server-key.pem \
	    >"$$out/$$server_name.log" 2>&1 &
	  server_pid=$$!
	  port=
	  for _ in $$(seq 100); do
	    port=$$(sed -n 's/^READY \([0-9][0-9]*\)$$/\1/p' "$$out/$$server_name.log")
	    if [ -n "$$port" ] || ! kill -0 "$$server_pid" 2>/dev/null; then break; fi
	    sleep 0.1
	  done
	  if [ -z "$$port" ]; then
	    echo "demo: FAILED: $$server_name did not report READY <port>"
	    exit 1
	  fi
	}
	# run_client NAME [ARG...]: runs examples/NAME against the server, then
	# stops the server; the demo fails if the client did.
	run_client() {
	  client=$$1
	  shift
	  echo "demo: server ready on 127.0.0.1:$$port; running $$client"
	  client_status=0
	  timeout -s TERM $(RUN_TIMEOUT) $(BUILD_DIR)/examples/$$client \
	    --connect "127.0.0.1:$$port" --ca $(CERT_DIR)/ca.pem --servername localhost \
	    "$$@" || client_status=$$?
	  echo "demo: stopping $$server_name (SIGTERM)"
	  stop_server
	  if [ "$$client_status" -ne 0 ]; then
	    echo "demo: FAILED: $$client exited with status $$client_status"
	    exit 1
	  fi
	}
	trap 'stop_server; rm -rf "$$out"' EXIT
	start_server echo_server
	run_client echo_client
	start_server hello_server
	run_client hello_client qrpc
	start_server game_server
	run_client game_client --clients 20 --seconds 3
	start_server qrpc-broker $(BUILD_DIR)/services/qrpc-broker
	run_client chat --demo 5
	echo "demo: OK"

# Run every test in both builds of the default (OpenSSL) backend; fails if
# any test failed in either. The normal build's tests include valgrind
# memcheck runs of the end-to-end suites. Then the unit and end-to-end
# suites of the GnuTLS build, the cross-backend test (tests/cross), and
# the suites with threads under ThreadSanitizer (test-tsan).
# Last each libFuzzer target of tests/fuzz runs for FUZZ_SECONDS (default
# 15) in a clang build of its own, inside $(SAN_DIR)/fuzz/, and any crash,
# leak or broken property fails the run.
test: build build-san build-gnutls
	@status=0
	echo "== tests: $(BUILD_DIR)/"
	$(CTEST) --test-dir $(BUILD_DIR) || status=1
	echo "== tests under AddressSanitizer and UBSan: $(SAN_DIR)/"
	$(SAN_ENV) $(CTEST) --test-dir $(SAN_DIR) || status=1
	echo "== unit and end-to-end tests on the GnuTLS backend: $(GNUTLS_DIR)/"
	$(CTEST) --test-dir $(GNUTLS_DIR) -LE '^(memcheck|soak|install)$$' || status=1
	echo "== cross-backend: servers of each backend against clients of the other"
	bash tests/cross/run-cross.sh $(BUILD_DIR) $(GNUTLS_DIR) || status=1
	echo "== suites with threads under ThreadSanitizer: $(TSAN_DIR)/"
	$(MAKE) test-tsan || status=1
	echo "== fuzzing, $(or $(FUZZ_SECONDS),15) s per target: $(SAN_DIR)/fuzz/"
	CC=clang cmake -S . -B $(SAN_DIR)/fuzz -DQRPC_SANITIZE=ON -DQRPC_FUZZ=ON \
	  -DQRPC_FUZZ_SECONDS=$(or $(FUZZ_SECONDS),15) $(CMAKE_FLAGS) >/dev/null
	cmake --build $(SAN_DIR)/fuzz -j$(JOBS) --target qrpc_fuzzers
	$(CTEST) --test-dir $(SAN_DIR)/fuzz -L '^fuzz$$' || status=1
	if [ "$$status" -ne 0 ]; then
	  echo "make test: FAILED (see the failures above)"
	  exit 1
	fi
	echo "make test: all tests passed"

# Install libraries, headers, pkg-config file and CMake package.
install: build
	cmake --install $(BUILD_DIR) --prefix "$(PREFIX)"

# Remove the build trees (and the demo certificates inside build/); the
# cached OpenSSL prefix stays (see README).
clean:
	rm -rf $(BUILD_DIR) $(SAN_DIR) $(GNUTLS_DIR) $(TSAN_DIR)
