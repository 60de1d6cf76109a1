#!/usr/bin/env bash
# Runs the Ory stand-in, the demo app and ory-proxy together. Ctrl-C stops all three.
# Usage: tests/demo.sh <directory holding the binaries>
set -euo pipefail

bin=${1:-target/debug}
port=${PORT:-4000}
ory_port=${ORY_PORT:-4433}
app_port=${APP_PORT:-3000}
ory="http://127.0.0.1:${ory_port}"

pids=()
stop() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "demo stopped"
}
trap stop INT TERM EXIT

"$bin/ory-standin" --port "$ory_port" &
pids+=($!)
"$bin/demo-app" --port "$app_port" --jwks-url "http://127.0.0.1:${port}/.ory/jwks.json" --issuer "$ory" \
    --proxy-url "http://127.0.0.1:${port}" &
pids+=($!)
"$bin/ory-proxy" local "http://127.0.0.1:${app_port}" --port "$port" --sdk-url "$ory" \
    --protect-path-prefix /members &
pids+=($!)

sleep 1
echo
echo "Open https://localhost:${port}/ and log in as demo@example.com / demo-password"
echo "(the stand-in's demo identity). /members needs a session. Ctrl-C stops everything."
# Whichever stops first (or Ctrl-C) ends the demo.
wait -n "${pids[@]}"
