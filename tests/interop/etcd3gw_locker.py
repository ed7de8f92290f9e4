"""Take an etcd key with OpenStack's etcd3gw lock, so the end-to-end tests can
check that a Python program on etcd3gw (etcd's gRPC-gateway JSON API over HTTP)
and the sidecar exclude each other on the same key.

It uses etcd3gw's own ``etcd3gw.lock.Lock`` unchanged: ``acquire()`` grants a
lease of --ttl seconds and runs, through ``POST <api>/kv/txn``,

    compare [CREATE(key) == 0]  success [put(key, <lock uuid>, lease)]  failure [range(key)]

``Lock`` names its key ``/locks/<name>``, so --key must start with ``/locks/``:
the name given to ``Lock`` is the rest. Then it prints one JSON line on stdout:

    {"held": true, "rev": N, "value": "<uuid>", "api": "/v3/"}
        it holds the key; N is the key's create revision, <uuid> its value
    {"held": false, "holder": "<v>" or null, "api": "/v3/"}
        someone else holds it; <v> is the key's value read right after
        (null if the key was gone by then)

"api" is the gRPC-gateway path etcd3gw discovered from GET /version.

If it holds the key it keeps holding it (refreshing the lease every ttl/3
seconds) until SIGTERM/SIGINT or until its standard input is closed, then
releases with ``Lock.release()`` and revokes the lease, and exits 0. If it does
not hold the key it revokes the lease ``acquire()`` granted and exits 0. Any
etcd error exits 1 with a message on stderr.

Run with the python of target/etcd3gw-venv (scripts/etcd3gw.sh installs it).
"""

import argparse
import json
import signal
import sys
import threading
import urllib.parse

import etcd3gw
from etcd3gw import exceptions
from etcd3gw.lock import Lock
from etcd3gw.utils import LOCK_PREFIX


def fail(message):
    print(f"etcd3gw_locker: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", default="http://127.0.0.1:2379")
    parser.add_argument("--key", required=True, help=f"the lock key, {LOCK_PREFIX}<name>")
    parser.add_argument("--ttl", type=int, default=5, help="lease TTL in seconds")
    args = parser.parse_args()
    if not args.key.startswith(LOCK_PREFIX) or args.key == LOCK_PREFIX:
        fail(f"--key must be {LOCK_PREFIX}<name> (etcd3gw's Lock prefixes names with it)")

    # Caught from the start, so a SIGTERM that arrives while the lease is still
    # being revoked cannot kill the process half-way.
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    url = urllib.parse.urlsplit(args.endpoint)
    client = etcd3gw.client(
        host=url.hostname, port=url.port, protocol=url.scheme, timeout=10
    )
    lock = Lock(args.key[len(LOCK_PREFIX):], ttl=args.ttl, client=client)
    assert lock.key == args.key, (lock.key, args.key)
    try:
        held = lock.acquire()
        api = client.api_path
        if not held:
            values = client.get(lock.key)
            holder = values[0].decode() if values else None
            print(json.dumps({"held": False, "holder": holder, "api": api}), flush=True)
            lock.lease.revoke()
            return
        kvs = client.get(lock.key, metadata=True)
        rev = int(kvs[0][1]["create_revision"]) if kvs else None
        print(
            json.dumps({"held": True, "rev": rev, "value": lock.uuid, "api": api}),
            flush=True,
        )
    except exceptions.Etcd3Exception as e:
        fail(f"acquiring {args.key} at {args.endpoint}: {e!r}")

    def wait_stdin_closed():
        while sys.stdin.buffer.read1(4096):
            pass
        stop.set()

    threading.Thread(target=wait_stdin_closed, daemon=True).start()
    try:
        while not stop.wait(max(args.ttl / 3, 0.2)):
            lock.refresh()
        if not lock.release():
            fail(f"releasing {args.key}: it no longer holds the value {lock.uuid}")
        lock.lease.revoke()
    except exceptions.Etcd3Exception as e:
        fail(f"holding or releasing {args.key}: {e!r}")


if __name__ == "__main__":
    main()
