package boltstore

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// The outbox: bucketEvents maps an 8-byte big-endian sequence number to an
// event's JSON, in the order events were written; bucketEventCursors maps
// a sink's name to the sequence number of the last event it delivered (0:
// none yet; a sink with no cursor reads from the first). One
// process owns the file, so there is one partition and no lease to share.
var (
	bucketEvents       = []byte("events")
	bucketEventCursors = []byte("event_cursors")
)

// partition is the one partition of the embedded outbox.
const partition = "0"

func seqKey(n uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], n)
	return k[:]
}

// putEvents appends events to the outbox in tx.
func putEvents(tx *bolt.Tx, events []quota.Event) error {
	b := tx.Bucket(bucketEvents)
	for _, e := range events {
		data, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("boltstore: encode event: %w", err)
		}
		n, err := b.NextSequence()
		if err != nil {
			return err
		}
		if err := b.Put(seqKey(n), data); err != nil {
			return err
		}
	}
	return nil
}

func decodeEvent(k, v []byte) (quota.Event, error) {
	var e quota.Event
	if err := json.Unmarshal(v, &e); err != nil {
		return e, fmt.Errorf("boltstore: decode event: %w", err)
	}
	e.Pos = strconv.FormatUint(binary.BigEndian.Uint64(k), 10)
	return e, nil
}

// ListEvents returns a page of events matching q, oldest first. The
// cursor is a sequence number: the last event returned on a full page,
// else the last event in the log (one transaction reads the page, and
// later events get later numbers, so polling from it misses none).
func (s *Store) ListEvents(ctx context.Context, q quota.EventQuery) (quota.EventPage, error) {
	var after uint64
	if q.After != "" {
		n, err := strconv.ParseUint(q.After, 10, 64)
		if err != nil {
			return quota.EventPage{}, quota.Invalid("after", "is not a cursor this API returned")
		}
		after = n
	}
	page := quota.EventPage{}
	end := after
	err := s.view(ctx, func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil; k, v = c.Next() {
			e, err := decodeEvent(k, v)
			if err != nil {
				return err
			}
			if !q.Match(e) {
				end = binary.BigEndian.Uint64(k)
				continue
			}
			if len(page.Events) == q.Take {
				page.More = true
				return nil
			}
			page.Events = append(page.Events, e)
			end = binary.BigEndian.Uint64(k)
		}
		return nil
	})
	if err != nil {
		return quota.EventPage{}, err
	}
	page.Cursor = strconv.FormatUint(end, 10)
	return page, nil
}

// EventPartitions returns the one partition.
func (s *Store) EventPartitions(context.Context) ([]string, error) { return []string{partition}, nil }

// ReadEvents returns up to n events after sink's cursor.
func (s *Store) ReadEvents(ctx context.Context, part, sink string, n int) ([]quota.Event, error) {
	var out []quota.Event
	err := s.view(ctx, func(tx *bolt.Tx) error {
		var after uint64
		if v := tx.Bucket(bucketEventCursors).Get([]byte(sink)); len(v) == 8 {
			after = binary.BigEndian.Uint64(v)
		}
		c := tx.Bucket(bucketEvents).Cursor()
		for k, v := c.Seek(seqKey(after + 1)); k != nil && len(out) < n; k, v = c.Next() {
			e, err := decodeEvent(k, v)
			if err != nil {
				return err
			}
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// AckEvent moves sink's cursor to pos.
func (s *Store) AckEvent(ctx context.Context, part, sink, pos string) error {
	n, err := strconv.ParseUint(pos, 10, 64)
	if err != nil {
		return quota.Invalid("pos", "is not a position of this outbox")
	}
	return s.update(ctx, func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEventCursors).Put([]byte(sink), seqKey(n))
	})
}

// StartSink gives a new sink a cursor: former's, or the last event's.
func (s *Store) StartSink(ctx context.Context, sink, former string) error {
	return s.update(ctx, func(tx *bolt.Tx) error {
		cursors := tx.Bucket(bucketEventCursors)
		if cursors.Get([]byte(sink)) != nil {
			return nil
		}
		var at []byte
		if former != "" {
			at = cursors.Get([]byte(former))
		}
		if at == nil {
			at = seqKey(0)
			if k, _ := tx.Bucket(bucketEvents).Cursor().Last(); k != nil {
				at = k
			}
		}
		return cursors.Put([]byte(sink), append([]byte(nil), at...))
	})
}

// LeadEvents always grants the lease: one process owns the file.
func (s *Store) LeadEvents(context.Context, string, time.Duration) (bool, error) { return true, nil }

// TrimEvents drops events written before t.
func (s *Store) TrimEvents(ctx context.Context, before time.Time) error {
	return s.update(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.First() {
			var e quota.Event
			if json.Unmarshal(v, &e) == nil && !e.Time.Before(before) {
				return nil
			}
			if err := c.Delete(); err != nil {
				return err
			}
		}
		return nil
	})
}
