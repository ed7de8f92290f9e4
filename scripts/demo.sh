#!/usr/bin/env bash
# A local demo: a real etcd, three etcd-elector replicas on one key, and a handoff you can
# watch. Everything runs on 127.0.0.1 and is stopped when the script ends (Ctrl-C included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh demo
cargo build --release --locked --quiet
bin=target/release/etcd-elector

tmp=$(mktemp -d "$( [ -d /dev/shm ] && echo /dev/shm || echo /tmp )/elector-demo.XXXXXX")
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
client=$(free_port); peer=$(free_port)
endpoint=http://127.0.0.1:$client
"${ETCD_BIN:-etcd}" --name demo --data-dir "$tmp/etcd" \
  --listen-client-urls "$endpoint" --advertise-client-urls "$endpoint" \
  --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
  --initial-cluster "demo=http://127.0.0.1:$peer" >"$tmp/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -sf "$endpoint/health" >/dev/null && break; sleep 0.1; done
echo "etcd is up at $endpoint (log: $tmp/etcd.log)"

declare -A port admin pid_of
for name in alpha bravo charlie; do
  port[$name]=$(free_port); admin[$name]=$(free_port)
  "$bin" --endpoints "$endpoint" --key /demo/leader --id "$name" --ttl 5 \
    --listen "127.0.0.1:${port[$name]}" --admin-listen "127.0.0.1:${admin[$name]}" >"$tmp/$name.log" 2>&1 &
  pid_of[$name]=$!
  pids+=($!)
  echo "replica $name: http://127.0.0.1:${port[$name]}/leader (log: $tmp/$name.log)"
done

show() {
  for name in alpha bravo charlie; do
    if kill -0 "${pid_of[$name]}" 2>/dev/null; then
      code=$(curl -s -o "$tmp/body" -w '%{http_code}' "http://127.0.0.1:${port[$name]}/leader" || true)
      printf '  %-8s %s %s\n' "$name" "$code" "$(cat "$tmp/body" 2>/dev/null)"
    else
      printf '  %-8s (stopped)\n' "$name"
    fi
  done
  printf '  etcdctl get /demo/leader -> %s\n' "$(ETCDCTL_API=3 etcdctl --endpoints "$endpoint" get /demo/leader --print-value-only)"
}

leader=""
for _ in $(seq 100); do
  for name in alpha bravo charlie; do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${port[$name]}/leader")" = 200 ]; then leader=$name; fi
  done
  [ -n "$leader" ] && break
  sleep 0.1
done
echo; echo "== elected: $leader"; show

echo; echo "== SIGTERM to $leader: it answers 503, hands the key to a successor, exits 0"
start=$(date +%s%N)
kill -TERM "${pid_of[$leader]}"
next=""
while [ -z "$next" ]; do
  for name in alpha bravo charlie; do
    [ "$name" = "$leader" ] && continue
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${port[$name]}/leader")" = 200 ]; then next=$name; fi
  done
done
end=$(date +%s%N)
wait "${pid_of[$leader]}" && status=0 || status=$?
echo "   $leader exited with status $status; $next answered 200 after $(( (end - start) / 1000000 )) ms"
show

echo; echo "== an operator deletes the key: the replicas campaign again at once"
ETCDCTL_API=3 etcdctl --endpoints "$endpoint" del /demo/leader >/dev/null
sleep 0.5
show

current=""
for name in alpha bravo charlie; do
  [ "$name" = "$leader" ] && continue
  if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${port[$name]}/leader")" = 200 ]; then current=$name; fi
done
echo; echo "== the application beside $current asks it to resign (POST /resign on its pod-local admin port)"
echo "   $(curl -s -X POST "http://127.0.0.1:${admin[$current]}/resign")"
sleep 0.5
show
echo; echo "Demo done; stopping everything."
