#!/usr/bin/env bash
# A local 3-node natlog cluster: n1 embeds NATS on 127.0.0.1:4222, n2 and n3
# connect to it; HTTP on 127.0.0.1:8081-8083. Data and logs go to $1
# (default natlog-cluster/). Ctrl-C stops the nodes with SIGINT, so they stay
# members and the same command restarts the same cluster.
# Run it with: go tool task cluster
set -eu
dir=${1:-natlog-cluster}
bin=${NATLOG_BIN:-bin/natlog}
mkdir -p "$dir"
common=(--cluster demo --bootstrap-expect 3 --raft-timeout 300ms --announce-interval 250ms)
pids=()
stop() {
  trap - INT TERM EXIT
  kill -INT "${pids[@]}" 2>/dev/null || true
  wait
}
trap stop INT TERM EXIT
"$bin" serve "${common[@]}" --node-id n1 --data-dir "$dir/n1" --nats-listen 127.0.0.1:4222 --http-listen 127.0.0.1:8081 >"$dir/n1.log" 2>&1 &
pids+=($!)
# n2 and n3 connect to n1's embedded NATS: wait until it takes connections.
for _ in $(seq 100); do
  if "$bin" logs --server nats://127.0.0.1:4222 --timeout 1s >/dev/null 2>&1; then
    break
  fi
  sleep 0.1
done
for i in 2 3; do
  "$bin" serve "${common[@]}" --node-id "n$i" --data-dir "$dir/n$i" --nats-url nats://127.0.0.1:4222 \
    --http-listen "127.0.0.1:808$i" >"$dir/n$i.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 100); do
  if "$bin" status --server nats://127.0.0.1:4222 --timeout 1s 2>/dev/null | grep -q '^leader: n'; then
    break
  fi
  sleep 0.2
done
"$bin" status --server nats://127.0.0.1:4222
echo "cluster up: NATS nats://127.0.0.1:4222, logs in $dir/n*.log; Ctrl-C stops it"
wait
