package redistest

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// clusterTimeout bounds how long a new cluster may take to create and
// reach cluster_state:ok on every node.
const clusterTimeout = 15 * time.Second

// clusterBusOffset is how far above its port a cluster node listens for
// the cluster bus (Redis's default).
const clusterBusOffset = 10000

// Cluster is a Redis Cluster of three masters (no replicas) owned by a
// test, each node a redis-server process on loopback. It is safe for
// concurrent use.
type Cluster struct {
	addrs []string
}

// StartCluster launches three cluster-enabled redis-server processes on free
// loopback ports (whose cluster bus ports, port+10000, are free too), joins
// them with redis-cli --cluster create, waits until every node reports
// cluster_state:ok, and kills them when t ends. Like Start, it skips t (or
// fails it, see RequireEnv) when redis-server or redis-cli is not installed.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	bin := lookPath(t, "redis-server")
	cli := lookPath(t, "redis-cli")
	c := &Cluster{}
	for i := 0; i < 3; i++ {
		dir := t.TempDir()
		addr, _ := startServer(t, bin, dir, freeClusterPort, "",
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes.conf"),
		)
		c.addrs = append(c.addrs, addr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterTimeout)
	defer cancel()
	args := append([]string{"--cluster", "create"}, c.addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redistest: redis-cli --cluster create %s: %v\n%s", strings.Join(c.addrs, " "), err, out)
	}
	for _, addr := range c.addrs {
		if err := waitClusterOK(ctx, addr); err != nil {
			t.Fatalf("redistest: cluster node %s: %v", addr, err)
		}
	}
	return c
}

// Addrs returns the host:port of every node; all are masters.
func (c *Cluster) Addrs() []string { return append([]string(nil), c.addrs...) }

// Client returns a new cluster client with ContextTimeoutEnabled and read
// and write timeouts of Timeout, closed when t ends (closing it earlier is
// fine).
func (c *Cluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Addrs(), ContextTimeoutEnabled: true, ReadTimeout: Timeout, WriteTimeout: Timeout})
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// FlushAll deletes every key on every node.
func (c *Cluster) FlushAll(t testing.TB) {
	t.Helper()
	for _, addr := range c.addrs {
		(&Server{addr: addr}).FlushAll(t)
	}
}

// freeClusterPort returns a loopback port that, like port+10000 for the
// cluster bus, was free a moment ago.
func freeClusterPort(t testing.TB) int {
	t.Helper()
	for attempt := 0; attempt < 50; attempt++ {
		port := freePort(t)
		if port+clusterBusOffset > 65535 {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port+clusterBusOffset)))
		if err != nil {
			continue
		}
		l.Close()
		return port
	}
	t.Fatalf("redistest: no free port with a free cluster bus port")
	return 0
}

// waitClusterOK polls CLUSTER INFO on addr until it reports
// cluster_state:ok or ctx ends.
func waitClusterOK(ctx context.Context, addr string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ContextTimeoutEnabled: true})
	defer c.Close()
	var last string
	for {
		info, err := c.ClusterInfo(ctx).Result()
		if err == nil && strings.Contains(info, "cluster_state:ok") {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = firstLine(info)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no cluster_state:ok within %v (last: %s)", clusterTimeout, last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(line)
}
