#!/usr/bin/env bash
# MLLP ingest benchmark (issue 2; PRODUCT.md §10). Measures, in one run on this machine:
#   1. the ceiling: `ferry bench echo`, a trivial MLLP server (fixed ACK, stores nothing);
#   2. the disk: 1 KiB write+fdatasync per second in the store's directory;
#   3. Ferry: MLLP -> durable SQLite commit (fsync) -> ACK, with 1 and 16 connections.
# The destination points at a port where nothing listens and retries hourly, so the numbers are
# ingest alone (messages accumulate in the durable queue, as they would with the API down).
# Usage: scripts/bench-mllp-ingest.sh [messages_for_16_connections]
set -euo pipefail
cd "$(dirname "$0")/.."
N16=${1:-100000}
N1=$(( N16 / 5 ))
cargo build --release -p ferry >/dev/null
BIN=target/release/ferry
TMP=$(mktemp -d)
cleanup() { kill "${ECHO:-}" "${FERRY:-}" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 not up" >&2; exit 1; }

EP=$(port)
$BIN bench echo --listen 127.0.0.1:"$EP" >/dev/null & ECHO=$!
wait_port "$EP"
echo "== echo ceiling"
$BIN bench load mllp://127.0.0.1:"$EP" -c 1 -n "$N1" --no-verify
$BIN bench load mllp://127.0.0.1:"$EP" -c 16 -n "$N16" --no-verify
kill "$ECHO"; wait "$ECHO" 2>/dev/null || true; ECHO=

echo "== disk"
$BIN bench fsync "$TMP"

FP=$(port)
cat > "$TMP/ferry.toml" <<TOML
[store]
path = "$TMP/ferry.db"

[admin]
listen = "127.0.0.1:0"

[[channel]]
name = "bench"
source = { type = "mllp", listen = "127.0.0.1:$FP" }

  [[channel.destination]]
  name = "parked"
  type = "mllp"
  address = "127.0.0.1:9"
  retry = { initial = "1h", max = "1h" }
TOML
FERRY_LOG=error $BIN run --config "$TMP/ferry.toml" >/dev/null & FERRY=$!
wait_port "$FP"
echo "== ferry durable ingest"
$BIN bench load mllp://127.0.0.1:"$FP" -c 1 -n "$N1"
$BIN bench load mllp://127.0.0.1:"$FP" -c 16 -n "$N16"
