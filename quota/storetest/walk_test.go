package storetest_test

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
	"github.com/tenantquota/caddy-tenant-quota/quota/redisstore"
	"github.com/tenantquota/caddy-tenant-quota/quota/storetest"
)

// TestWalk runs seeded random walks on the embedded store, Redis and a
// Redis Cluster side by side with the Go reference.
func TestWalk(t *testing.T) {
	t.Parallel()
	bolt, err := boltstore.Open(boltstore.Options{Path: filepath.Join(t.TempDir(), "walk.db"), DistinctKeys: walkKeyCap})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bolt.Close() })
	rs, err := redisstore.New(redisstore.Options{Client: redistest.Start(t).Client(t), DistinctKeys: walkKeyCap, Timeout: redistest.Timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rs.Close() })
	cluster := redistest.StartCluster(t)
	cs, err := redisstore.New(redisstore.Options{Client: cluster.Client(t), DistinctKeys: walkKeyCap, Timeout: redistest.Timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	stores := map[string]quota.Store{"embedded": bolt, "redis": rs, "cluster": cs}
	for seed := range uint64(walkSeeds()) {
		storetest.Walk(t, seed+1, 300, walkKeyCap, stores)
	}
}

// walkKeyCap is the stores' distinct-key cap in the walk: below the six
// keys it uses, so that keys past the cap are walked too.
const walkKeyCap = 4

// walkSeeds is how many walks TestWalk takes: TQ_WALK_SEEDS, or 8.
func walkSeeds() int {
	if n, err := strconv.Atoi(os.Getenv("TQ_WALK_SEEDS")); err == nil && n > 0 {
		return n
	}
	return 8
}
