package redisstore

import (
	"path/filepath"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
	"github.com/tenantquota/caddy-tenant-quota/quota/storetest"
)

func openBolt(t *testing.T) *boltstore.Store {
	t.Helper()
	b, err := boltstore.Open(boltstore.Options{Path: filepath.Join(t.TempDir(), "q.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// TestMigrate: from the embedded store to Redis, to a Redis Cluster, and
// back from Redis to the embedded store (a rollback).
func TestMigrate(t *testing.T) {
	t.Parallel()
	t.Run("embedded to redis", func(t *testing.T) {
		storetest.Migrate(t, openBolt(t), newStore(t, redistest.Start(t), Options{}))
	})
	t.Run("redis to embedded", func(t *testing.T) {
		storetest.Migrate(t, newStore(t, redistest.Start(t), Options{}), openBolt(t))
	})
	t.Run("embedded to cluster", func(t *testing.T) {
		storetest.Migrate(t, openBolt(t), newClusterStore(t, redistest.StartCluster(t), ""))
	})
}
