// Package quotatest opens real stores and a quota.Service over them for
// tests of the packages above quota (events, caddymodule), closed when
// the test ends. It is for tests only.
package quotatest

import (
	"path/filepath"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
	"github.com/tenantquota/caddy-tenant-quota/quota/redisstore"
)

// Embedded opens an embedded store in t's temporary directory and a
// service over it.
func Embedded(t testing.TB) (*boltstore.Store, *quota.Service) {
	t.Helper()
	store, err := boltstore.Open(boltstore.Options{Path: filepath.Join(t.TempDir(), "q.db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store, service(t, store)
}

// Redis opens a store on srv (one node's connection) and a service over
// it.
func Redis(t testing.TB, srv *redistest.Server) (*redisstore.Store, *quota.Service) {
	t.Helper()
	store, err := redisstore.New(redisstore.Options{Client: srv.Client(t), Timeout: redistest.Timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	return store, service(t, store)
}

func service(t testing.TB, store quota.Store) *quota.Service {
	t.Helper()
	svc, err := quota.NewService(quota.Options{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc
}
