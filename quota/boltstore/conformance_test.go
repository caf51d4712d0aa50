package boltstore_test

import (
	"path/filepath"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
	"github.com/tenantquota/caddy-tenant-quota/quota/storetest"
)

func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, func(t *testing.T) quota.Store {
		s, err := boltstore.Open(boltstore.Options{Path: filepath.Join(t.TempDir(), "quota.db"), Thresholds: storetest.Thresholds})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
		return s
	})
}
