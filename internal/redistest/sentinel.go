package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/redis/go-redis/v9"
)

// Sentinel is one Redis Sentinel process owned by a test. It is safe for
// concurrent use.
type Sentinel struct {
	addr string
}

// StartSentinel launches a Redis Sentinel (redis-server --sentinel) on a
// free loopback port that monitors master under masterName with a quorum of
// one, waits until it names master's address, and kills it when t ends. It
// skips or fails t like Start.
func StartSentinel(t testing.TB, master *Server, masterName string) *Sentinel {
	t.Helper()
	bin := lookPath(t, "redis-server")
	host, port, err := net.SplitHostPort(master.Addr())
	if err != nil {
		t.Fatalf("redistest: master address: %v", err)
	}
	dir := t.TempDir()
	// Sentinel rewrites its config file, so it needs one of its own.
	conf := filepath.Join(dir, "sentinel.conf")
	monitor := fmt.Sprintf("sentinel monitor %s %s %s 1\n", masterName, host, port)
	if err := os.WriteFile(conf, []byte(monitor), 0o600); err != nil {
		t.Fatalf("redistest: write sentinel config: %v", err)
	}
	addr, _ := startServer(t, bin, dir, freePort, conf, "--sentinel")
	s := &Sentinel{addr: addr}

	c := redis.NewSentinelClient(&redis.Options{Addr: s.addr, ContextTimeoutEnabled: true})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	got, err := c.GetMasterAddrByName(ctx, masterName).Result()
	if err != nil || len(got) != 2 || net.JoinHostPort(got[0], got[1]) != master.Addr() {
		t.Fatalf("redistest: sentinel on %s names master %v (%v), want %s", s.addr, got, err, master.Addr())
	}
	return s
}

// Addr returns the sentinel's host:port.
func (s *Sentinel) Addr() string { return s.addr }
