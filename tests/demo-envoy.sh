#!/usr/bin/env bash
# The demo through Envoy: the Ory stand-in, the demo app, and a real Envoy running the filter
# from the bootstrap `ory-proxy envoy-config` prints for the same flags as `make demo`.
# Ctrl-C stops all three.
# Usage: tests/demo-envoy.sh <directory holding the binaries> <filter .wasm> <envoy binary>
set -euo pipefail

bin=${1:-target/debug}
module=$(cd "$(dirname "${2:?the filter .wasm}")" && pwd)/$(basename "$2")
envoy=${3:?the envoy binary}
port=${PORT:-4000}
ory_port=${ORY_PORT:-4433}
app_port=${APP_PORT:-3000}
ory="http://127.0.0.1:${ory_port}"
work=$(mktemp -d)

pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
    echo "demo stopped"
}
trap stop INT TERM EXIT

# The bootstrap does not hold the signing key: Envoy passes ORY_PROXY_SIGNING_KEY from its own
# environment to the filter. The demo signs with a key of its own, made by envoy-config in a
# private temporary home and removed at the end.
export ORY_PROXY_HOME="$work/home"
"$bin/ory-proxy" envoy-config "http://127.0.0.1:${app_port}" --port "$port" --sdk-url "$ory" \
    --protect-path-prefix /members --module-path "$module" -o "$work/envoy.yaml"

"$bin/ory-standin" --port "$ory_port" &
pids+=($!)
"$bin/demo-app" --port "$app_port" --jwks-url "http://127.0.0.1:${port}/.ory/jwks.json" --issuer "$ory" \
    --proxy-url "http://127.0.0.1:${port}" &
pids+=($!)
ORY_PROXY_SIGNING_KEY="$(cat "$ORY_PROXY_HOME/jwt-signing-key.pem")" \
    "$envoy" -c "$work/envoy.yaml" --concurrency 2 --disable-hot-restart --log-level warning &
pids+=($!)

sleep 2
echo
echo "Envoy is serving the demo: open http://localhost:${port}/ and log in as demo@example.com /"
echo "demo-password (the stand-in's demo identity). /members needs a session. Ctrl-C stops everything."
# Whichever stops first (or Ctrl-C) ends the demo.
wait -n "${pids[@]}"
