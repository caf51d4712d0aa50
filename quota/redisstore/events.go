package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// The outbox is one Redis stream per hash slot that holds users: a user's
// events go to the stream whose key hashes to the user's own slot, so that
// a script writes a change and its events in one atomic step, on Redis
// Cluster too. Each entry has one field, "e", the event's JSON. Streams are
// trimmed by age as they are written (XADD MINID), so memory is bounded by
// the retention. A sink's delivery cursor in a stream is a field of a hash
// in the same slot (none: the sink reads the stream from its start); one
// gateway at a time delivers, under a lease.

// DefaultEventRetention is how long events are kept when
// Options.EventRetention is zero.
const DefaultEventRetention = 7 * 24 * time.Hour

// eventArgs encodes events as the trailing ARGV of an outbox script:
// retention ms, count, then the JSONs.
func (s *Store) eventArgs(events []quota.Event) ([]any, error) {
	args := make([]any, 0, 2+len(events))
	args = append(args, s.retention.Milliseconds(), len(events))
	for _, e := range events {
		data, err := json.Marshal(e)
		if err != nil {
			return nil, fmt.Errorf("encode event: %w", err)
		}
		args = append(args, string(data))
	}
	return args, nil
}

// slotTags[i] is a hash tag whose key slot is i.
var (
	slotTagsOnce sync.Once
	slotTags     [16384]string
)

func slotTag(slot uint16) string {
	slotTagsOnce.Do(func() {
		left := len(slotTags)
		for i := 0; left > 0; i++ {
			tag := "ev" + strconv.FormatInt(int64(i), 36)
			if sl := keySlot(tag); slotTags[sl] == "" {
				slotTags[sl] = tag
				left--
			}
		}
	})
	return slotTags[slot]
}

// keySlot is Redis Cluster's slot of a hash tag: CRC16 (XMODEM) mod 16384.
func keySlot(tag string) uint16 {
	var crc uint16
	for i := 0; i < len(tag); i++ {
		crc ^= uint16(tag[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc % 16384
}

// eventsKey is the outbox stream of a user's slot; cursorsKey the hash of
// the sinks' cursors in that stream.
func (s *Store) eventsKey(userID string) string {
	return s.streamKey(slotTag(keySlot(userID)))
}

func (s *Store) streamKey(tag string) string { return s.prefix + ":{" + tag + "}:events" }

func cursorsKey(stream string) string { return stream + ":cursors" }

func (s *Store) leaderKey() string { return s.prefix + ":events:leader" }

// sinksKey is the hash of the sinks started (see StartSink): name -> Unix
// ms of the start, for an operator's eyes.
func (s *Store) sinksKey() string { return s.prefix + ":events:sinks" }

// EventPartitions lists the outbox streams, on every master.
func (s *Store) EventPartitions(ctx context.Context) ([]string, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	var mu sync.Mutex
	var out []string
	pattern := s.prefix + ":{ev*}:events"
	scan := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, pattern, 1000).Iterator()
		for iter.Next(ctx) {
			mu.Lock()
			out = append(out, iter.Val())
			mu.Unlock()
		}
		return iter.Err()
	}
	var err error
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, scan)
	} else if c, ok := s.rdb.(*redis.Client); ok {
		err = scan(ctx, c)
	} else {
		return nil, fmt.Errorf("event partitions: unsupported client %T", s.rdb)
	}
	if err != nil {
		return nil, fmt.Errorf("event partitions: %w", err)
	}
	sort.Strings(out)
	return out, nil
}

func decodeEntry(m redis.XMessage) (quota.Event, error) {
	var e quota.Event
	raw, _ := m.Values["e"].(string)
	if err := json.Unmarshal([]byte(raw), &e); err != nil {
		return e, fmt.Errorf("decode event %s: %w", m.ID, err)
	}
	e.Pos = m.ID
	return e, nil
}

// ReadEvents returns up to n events of stream part after sink's cursor.
func (s *Store) ReadEvents(ctx context.Context, part, sink string, n int) ([]quota.Event, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	after, err := s.rdb.HGet(ctx, cursorsKey(part), sink).Result()
	if errors.Is(err, redis.Nil) {
		after = "0-0"
	} else if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	msgs, err := s.rdb.XRangeN(ctx, part, "("+after, "+", int64(n)).Result()
	if err != nil {
		return nil, fmt.Errorf("read events: %w", err)
	}
	out := make([]quota.Event, 0, len(msgs))
	for _, m := range msgs {
		e, err := decodeEntry(m)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// AckEvent moves sink's cursor in stream part to pos.
func (s *Store) AckEvent(ctx context.Context, part, sink, pos string) error {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	if err := s.rdb.HSet(ctx, cursorsKey(part), sink, pos).Err(); err != nil {
		return fmt.Errorf("ack event: %w", err)
	}
	return nil
}

// StartSink readies sink's cursors. The sinks hash (sinksKey) records the
// sinks started; a sink in it, or with a cursor in some stream (started
// before the hash was kept), resumes. A new one gets, in every stream,
// former's cursor if former has any, else the stream's last entry; a
// stream made later has no cursor and is read from its start, which is
// after the sink's. Two nodes starting one sink at once agree: a cursor
// is only ever set if none is (HSETNX).
func (s *Store) StartSink(ctx context.Context, sink, former string) error {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	started, err := s.rdb.HExists(ctx, s.sinksKey(), sink).Result()
	if err != nil || started {
		return wrapErr("start sink", err)
	}
	parts, err := s.EventPartitions(ctx)
	if err != nil {
		return err
	}
	has := func(name string) (bool, error) {
		for _, p := range parts {
			ok, err := s.rdb.HExists(ctx, cursorsKey(p), name).Result()
			if err != nil || ok {
				return ok, err
			}
		}
		return false, nil
	}
	known, err := has(sink)
	if err != nil {
		return wrapErr("start sink", err)
	}
	takeOver := false
	if !known && former != "" {
		if takeOver, err = has(former); err != nil {
			return wrapErr("start sink", err)
		}
	}
	for _, p := range parts {
		if known {
			break // started by an older version, which kept no sinks hash: it resumes
		}
		at, err := s.startAt(ctx, p, former, takeOver)
		if err == nil {
			err = s.rdb.HSetNX(ctx, cursorsKey(p), sink, at).Err()
		}
		if err != nil {
			return wrapErr("start sink", err)
		}
	}
	return wrapErr("start sink", s.rdb.HSet(ctx, s.sinksKey(), sink, time.Now().UnixMilli()).Err())
}

// startAt is a new sink's cursor in stream p: former's (none: the
// stream's start) when it takes over former's, else the last entry's.
func (s *Store) startAt(ctx context.Context, p, former string, takeOver bool) (string, error) {
	if takeOver {
		v, err := s.rdb.HGet(ctx, cursorsKey(p), former).Result()
		if errors.Is(err, redis.Nil) {
			return "0-0", nil
		}
		return v, err
	}
	last, err := s.rdb.XRevRangeN(ctx, p, "+", "-", 1).Result()
	if err != nil || len(last) == 0 {
		return "0-0", err
	}
	return last[0].ID, nil
}

// wrapErr wraps a non-nil err with what failed.
func wrapErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}

// leadScript takes or renews the lease KEYS[1] for holder ARGV[1] for
// ARGV[2] ms; it returns 1 when the caller holds it.
var leadScript = redis.NewScript(lua("lead.lua"))

// LeadEvents takes or renews the delivery lease for holder.
func (s *Store) LeadEvents(ctx context.Context, holder string, ttl time.Duration) (bool, error) {
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	n, err := leadScript.Run(ctx, s.rdb, []string{s.leaderKey()}, holder, ttl.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("event lease: %w", err)
	}
	return n == 1, nil
}

// TrimEvents drops events written before t from every stream (writes trim
// too; this catches streams nobody writes to any more).
func (s *Store) TrimEvents(ctx context.Context, before time.Time) error {
	parts, err := s.EventPartitions(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	for _, p := range parts {
		if err := s.rdb.XTrimMinID(ctx, p, strconv.FormatInt(before.UnixMilli(), 10)).Err(); err != nil {
			return fmt.Errorf("trim events: %w", err)
		}
	}
	return nil
}

// ListEvents merges the streams in the order their entries were written
// (stream ids come from the Redis clock; ties go by stream). The cursor is
// "<stream id>/<stream key>": the last event of a full page, else
// "<ms>-0/", every entry from that millisecond on, in every stream.
//
// The streams are read one after another, not at once, so a page lists
// only the entries older than a cutoff that every master's clock had
// passed before the reading began (listCutoff): an entry written later,
// in any stream, has a later id, and a client polling with the cursor
// sees it on its next page instead of never. Entries newer than the
// cutoff wait for the next page; the listing waits a millisecond or two
// for them, so that a change is listed once it is made. This holds while
// the masters' clocks do not step back (a failover to a master whose
// clock is behind may skip entries of the moments in between).
func (s *Store) ListEvents(ctx context.Context, q quota.EventQuery) (quota.EventPage, error) {
	afterID, afterPart := "0-0", ""
	if q.After != "" {
		id, part, ok := strings.Cut(q.After, "/")
		if !ok || !validStreamID(id) {
			return quota.EventPage{}, quota.Invalid("after", "is not a cursor this API returned")
		}
		afterID, afterPart = id, part
	}
	if q.UserID != "" && !validID(q.UserID) {
		return quota.EventPage{Cursor: afterID + "/" + afterPart}, nil
	}
	ctx, cancel := s.withDeadline(ctx)
	defer cancel()
	for attempt := 0; ; attempt++ {
		page, waiting, err := s.listEvents(ctx, q, afterID, afterPart)
		if err != nil || !waiting || page.More || attempt == 2 {
			return page, err
		}
		select {
		case <-ctx.Done():
			return page, nil
		case <-time.After(time.Millisecond):
		}
	}
}

// listEvents reads one page after (afterID, afterPart) up to the cutoff;
// waiting reports entries newer than the cutoff.
func (s *Store) listEvents(ctx context.Context, q quota.EventQuery, afterID, afterPart string) (page quota.EventPage, waiting bool, err error) {
	// The cutoff first, the partitions next: a stream made after the
	// cutoff holds only entries after it.
	cutoff, err := s.listCutoff(ctx)
	if err != nil {
		return page, false, err
	}
	var parts []string
	if q.UserID != "" {
		parts = []string{s.eventsKey(q.UserID)}
	} else if parts, err = s.EventPartitions(ctx); err != nil {
		return page, false, err
	}
	type item struct {
		e    quota.Event
		part string
	}
	var all []item
	for _, p := range parts {
		start := "(" + afterID
		if p > afterPart {
			start = afterID // the same id in a later stream comes after the cursor
		}
		// Read until q.Take matching events, the cutoff or the stream's end.
	stream:
		for found := 0; found <= q.Take; {
			msgs, err := s.rdb.XRangeN(ctx, p, start, "+", int64(q.Take+1)).Result()
			if err != nil {
				return page, false, fmt.Errorf("list events: %w", err)
			}
			for _, m := range msgs {
				if ms, _, _ := parseStreamID(m.ID); ms >= cutoff {
					waiting = true
					break stream
				}
				e, err := decodeEntry(m)
				if err != nil {
					return page, false, err
				}
				if q.Match(e) {
					all = append(all, item{e, p})
					found++
				}
			}
			if len(msgs) < q.Take+1 {
				break
			}
			start = "(" + msgs[len(msgs)-1].ID
		}
	}
	sort.Slice(all, func(i, j int) bool {
		a, b := all[i], all[j]
		if c := compareStreamIDs(a.e.Pos, b.e.Pos); c != 0 {
			return c < 0
		}
		return a.part < b.part
	})
	if len(all) > q.Take {
		all = all[:q.Take]
		last := all[len(all)-1]
		page.More, page.Cursor = true, last.e.Pos+"/"+last.part
	} else if end := strconv.FormatUint(cutoff, 10) + "-0"; compareStreamIDs(end, afterID) > 0 {
		page.Cursor = end + "/"
	} else {
		page.Cursor = afterID + "/" + afterPart // clocks behind the cursor: it stays
	}
	page.Events = make([]quota.Event, len(all))
	for i, it := range all {
		page.Events[i] = it.e
	}
	return page, waiting, nil
}

// listCutoff is the lowest of the masters' clocks, in Unix ms: an entry
// written from now on, in any stream, has an id at or after it.
func (s *Store) listCutoff(ctx context.Context) (uint64, error) {
	var mu sync.Mutex
	cutoff := uint64(math.MaxUint64)
	clock := func(ctx context.Context, c *redis.Client) error {
		now, err := c.Time(ctx).Result()
		if err != nil {
			return err
		}
		mu.Lock()
		cutoff = min(cutoff, uint64(now.UnixMilli()))
		mu.Unlock()
		return nil
	}
	var err error
	if cc, ok := s.rdb.(*redis.ClusterClient); ok {
		err = cc.ForEachMaster(ctx, clock)
	} else if c, ok := s.rdb.(*redis.Client); ok {
		err = clock(ctx, c)
	} else {
		return 0, fmt.Errorf("list events: unsupported client %T", s.rdb)
	}
	if err != nil {
		return 0, fmt.Errorf("list events: the masters' clocks: %w", err)
	}
	return cutoff, nil
}

func parseStreamID(id string) (ms, seq uint64, ok bool) {
	a, b, found := strings.Cut(id, "-")
	if !found {
		return 0, 0, false
	}
	ms, err1 := strconv.ParseUint(a, 10, 64)
	seq, err2 := strconv.ParseUint(b, 10, 64)
	return ms, seq, err1 == nil && err2 == nil
}

func validStreamID(id string) bool {
	_, _, ok := parseStreamID(id)
	return ok
}

func compareStreamIDs(a, b string) int {
	am, as, _ := parseStreamID(a)
	bm, bs, _ := parseStreamID(b)
	switch {
	case am != bm:
		if am < bm {
			return -1
		}
		return 1
	case as != bs:
		if as < bs {
			return -1
		}
		return 1
	}
	return 0
}
