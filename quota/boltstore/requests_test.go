package boltstore

import (
	"fmt"
	"testing"
	"time"
)

// TestRequestRecordsExpireInOrder: request records expire oldest first
// without a scan of the live ones (a scan per admission made the embedded
// store ten times slower under load).
func TestRequestRecordsExpireInOrder(t *testing.T) {
	t.Parallel()
	e := &entry{}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for i := 0; i < 5000; i++ {
		e.remember(fmt.Sprint(i), true, now.Add(time.Duration(i)*time.Millisecond))
	}
	if len(e.requests) != 5000 || len(e.order) != 5000 {
		t.Fatalf("%d records, %d in order", len(e.requests), len(e.order))
	}
	// 10s after record 2000 was made, records 0..2000 are gone.
	if _, ok := e.request("2001", now.Add(2*time.Second+requestTTL)); !ok {
		t.Fatal("a live record expired")
	}
	if _, ok := e.request("1999", now.Add(2*time.Second+requestTTL)); ok {
		t.Fatal("an old record lived on")
	}
	if len(e.requests) != 2999 || len(e.order) != 2999 {
		t.Fatalf("after expiry: %d records, %d in order", len(e.requests), len(e.order))
	}
	e.remember("2001", false, now.Add(2*time.Second+requestTTL))
	if len(e.order) != 2999 {
		t.Fatal("updating a record queued it twice")
	}
	e.expire(now.Add(time.Hour))
	if len(e.requests) != 0 || e.order != nil {
		t.Fatalf("all expired: %d records, order %v", len(e.requests), e.order != nil)
	}
}
