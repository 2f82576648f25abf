#!/usr/bin/env bash
# The PRODUCT.md §10 benchmark suite (issue 6), every figure measured in one run on this machine
# next to the machine's own ceiling:
#   1. ceiling: `ferry bench echo` (reads a frame, writes a fixed ACK, stores nothing), 1 and 16
#      connections, driven by the same load generator as Ferry;
#   2. disk: 1 KiB write + fdatasync per second in the store's directory;
#   3. Ferry idle: time to ready and RSS with one channel deployed, no traffic;
#   4. durable ingest MLLP -> store (fsync) -> ACK, 1 and 16 connections, destination parked;
#   5. ACK latency at a steady 1,000 msg/s (4 connections);
#   6. RSS with one million queued messages (the parked destination's queue);
#   7. end to end MLLP -> Ferry (durable) -> MLLP -> `ferry bench receive`, 16 connections;
#   8. zero loss: `ferry bench crash`, 20 SIGKILLs under 4 resending senders (on the same
#      PostgreSQL database with --store-url: the run uses a fresh schema in it and drops it).
# Usage: scripts/bench-suite.sh [--store-url URL] [N16] [QUEUED]
#   N16     messages for the 16-connection runs (default 100000; the 1-connection runs use N16/5)
#   QUEUED  queue depth for the memory measurement (default 1000000)
#   --store-url postgres://...   run Ferry on that PostgreSQL database instead of a SQLite file
set -euo pipefail
cd "$(dirname "$0")/.."
STORE_URL=
if [ "${1:-}" = "--store-url" ]; then STORE_URL=$2; shift 2; fi
N16=${1:-100000}
QUEUED=${2:-1000000}
N1=$(( N16 / 5 ))
cargo build --release -p ferry >/dev/null
BIN=target/release/ferry
TMP=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 300); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }
rss_mb() { awk '/VmRSS/ { printf "%.1f MB", $2 / 1024 }' "/proc/$1/status"; }
store_section() {
  if [ -n "$STORE_URL" ]; then printf '[store]\nurl = "%s"\n' "$STORE_URL"; else printf '[store]\npath = "%s"\n' "$1"; fi
}

echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD), $(nproc) cores, store: ${STORE_URL:-sqlite}"

EP=$(port)
$BIN bench echo --listen 127.0.0.1:"$EP" >/dev/null & PIDS+=($!)
wait_port "$EP"
echo "== 1. echo ceiling"
$BIN bench load mllp://127.0.0.1:"$EP" -c 1 -n "$N1" --no-verify
$BIN bench load mllp://127.0.0.1:"$EP" -c 16 -n "$N16" --no-verify

echo "== 2. disk"
$BIN bench fsync "$TMP"

# Ferry with its destination parked: messages accumulate in the durable queue.
FP=$(port)
{ store_section "$TMP/ingest.db"; cat <<TOML

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
} > "$TMP/ingest.toml"
FERRY_LOG=error $BIN run --config "$TMP/ingest.toml" > "$TMP/ingest.out" & FERRY=$!; PIDS+=($FERRY)
wait_port "$FP"
sleep 1
echo "== 3. idle: $(grep -o 'ready in [0-9]* ms' "$TMP/ingest.out" || echo 'ready time not printed'), RSS $(rss_mb $FERRY)"

echo "== 4. durable ingest (destination parked)"
$BIN bench load mllp://127.0.0.1:"$FP" -c 1 -n "$N1"
$BIN bench load mllp://127.0.0.1:"$FP" -c 16 -n "$N16"

echo "== 5. ACK latency at 1,000 msg/s"
$BIN bench load mllp://127.0.0.1:"$FP" -c 4 -n 20000 --rate 1000

echo "== 6. memory with $QUEUED queued"
DONE=$(( N1 + N16 + 20000 ))
if [ "$QUEUED" -gt "$DONE" ]; then
  $BIN bench load mllp://127.0.0.1:"$FP" -c 16 -n $(( QUEUED - DONE )) --size 512 >/dev/null
fi
sleep 2
echo "queued ~$(( QUEUED > DONE ? QUEUED : DONE )): RSS $(rss_mb $FERRY)"
kill "$FERRY"; wait "$FERRY" 2>/dev/null || true

echo "== 7. end to end MLLP -> Ferry -> MLLP"
RP=$(port)
$BIN bench receive --listen 127.0.0.1:"$RP" --expect "$N16" > "$TMP/receive.out" & RECV=$!; PIDS+=($RECV)
wait_port "$RP"
EFP=$(port)
{ store_section "$TMP/e2e.db"; cat <<TOML

[admin]
listen = "127.0.0.1:0"

[[channel]]
name = "e2e"
source = { type = "mllp", listen = "127.0.0.1:$EFP" }

  [[channel.destination]]
  name = "downstream"
  type = "mllp"
  address = "127.0.0.1:$RP"
TOML
} > "$TMP/e2e.toml"
if [ -n "$STORE_URL" ]; then echo "(end to end on PostgreSQL shares the ingest run's database)"; fi
FERRY_LOG=error $BIN run --config "$TMP/e2e.toml" >/dev/null & FERRY=$!; PIDS+=($FERRY)
wait_port "$EFP"
$BIN bench load mllp://127.0.0.1:"$EFP" -c 16 -n "$N16"
wait "$RECV" || true
cat "$TMP/receive.out" | tail -1

echo "## 8. zero loss across 20 SIGKILLs (ferry bench crash)"
CRASH_STORE=()
if [ -n "$STORE_URL" ]; then CRASH_STORE=(--store-url "$STORE_URL"); fi
$BIN bench crash --kills 20 --senders 4 "${CRASH_STORE[@]}" || true
