// golocker takes an etcd key with the classic leased transaction, the same
// protocol etcd-elector speaks, so the end-to-end tests can check that a Go
// program built on etcd's own clientv3 and the sidecar exclude each other.
//
// It grants a lease of --ttl seconds, keeps it alive, and runs exactly
//
//	Txn(If(CreateRevision(key) == 0)).Then(OpPut(key, id, WithLease(lease))).Else(OpGet(key))
//
// then prints one JSON line on stdout:
//
//	{"held":true,"rev":N}           it holds the key; N is the key's create revision
//	{"held":false,"holder":"<v>"}   someone else holds it; <v> is the key's value
//
// If it holds the key it keeps holding it until SIGTERM/SIGINT or until its
// standard input is closed, then revokes the lease (which deletes the key) and
// exits 0. If it does not hold the key it revokes its unused lease and exits 0.
// Any etcd error exits 1 with a message on stderr.
//
// Built by tests/support (go_locker) in GOPATH mode against Debian's
// golang-etcd-server-dev: GO111MODULE=off GOPATH=/usr/share/gocode go build.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"io/ioutil"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
)

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "golocker: "+format+"\n", args...)
	os.Exit(1)
}

func main() {
	endpoints := flag.String("endpoints", "http://127.0.0.1:2379", "etcd client URLs, comma-separated")
	key := flag.String("key", "", "the lock key (required)")
	id := flag.String("id", "golocker", "the value stored at the key while held")
	ttl := flag.Int64("ttl", 5, "lease TTL in seconds")
	flag.Parse()
	if *key == "" {
		fail("--key is required")
	}
	// Caught from the start, so a SIGTERM that arrives while the lease is
	// still being revoked cannot kill the process half-way.
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)

	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   strings.Split(*endpoints, ","),
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		fail("connecting to %s: %v", *endpoints, err)
	}
	defer cli.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	lease, err := cli.Grant(ctx, *ttl)
	cancel()
	if err != nil {
		fail("granting a lease: %v", err)
	}

	// Keep the lease alive for as long as the process runs; the channel must be
	// drained or the client logs that it is full.
	kaCtx, kaCancel := context.WithCancel(context.Background())
	defer kaCancel()
	ka, err := cli.KeepAlive(kaCtx, lease.ID)
	if err != nil {
		fail("keeping the lease alive: %v", err)
	}
	go func() {
		for range ka {
		}
	}()

	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	resp, err := cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(*key), "=", 0)).
		Then(clientv3.OpPut(*key, *id, clientv3.WithLease(lease.ID))).
		Else(clientv3.OpGet(*key)).
		Commit()
	cancel()
	if err != nil {
		fail("campaign transaction: %v", err)
	}

	out := json.NewEncoder(os.Stdout)
	if !resp.Succeeded {
		holder := ""
		if rr := resp.Responses[0].GetResponseRange(); rr != nil && len(rr.Kvs) > 0 {
			holder = string(rr.Kvs[0].Value)
		}
		_ = out.Encode(map[string]interface{}{"held": false, "holder": holder})
		revoke(cli, lease.ID)
		return
	}
	// The put's revision is the key's create revision: the key did not exist.
	_ = out.Encode(map[string]interface{}{"held": true, "rev": resp.Header.Revision})

	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(ioutil.Discard, os.Stdin)
		close(stdinClosed)
	}()
	select {
	case <-stop:
	case <-stdinClosed:
	}
	kaCancel()
	revoke(cli, lease.ID)
}

func revoke(cli *clientv3.Client, id clientv3.LeaseID) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := cli.Revoke(ctx, id); err != nil {
		fail("revoking lease %x: %v", int64(id), err)
	}
}
