package boltstore

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// shardCount is the number of counter locks. Users hash onto shards, so
// admissions of different users rarely wait for each other.
const shardCount = 64

var shardSeed = maphash.MakeSeed()

// shard holds the in-memory counters of the users that hash onto it. mu
// guards everything in the shard, including the counters of its entries.
type shard struct {
	mu      sync.Mutex
	entries map[string]*entry
	// dirty holds the entries changed since the last flush.
	dirty map[string]*entry
	// gone holds the users deleted lately, with when: a late settlement
	// of theirs writes nothing, an admission is refused (see goneFor).
	gone map[string]time.Time
}

// goneFor is how long a deleted user's id is remembered: longer than any
// node serves a deleted user from its cache, or a request runs.
const goneFor = 24 * time.Hour

// entry is one user's counters, keyed by quota.CounterKey.
type entry struct {
	counters map[string]quota.CounterState
	// keys are the distinct keys counted (quota.DistinctKey), persisted
	// with the counters.
	keys map[string]struct{}
	// leases are the reservations of requests not settled yet, by request
	// id, persisted with the counters.
	leases map[string]lease
	// requests remembers request ids, in memory only, for requestTTL;
	// order holds them oldest first so expiry costs no scan.
	requests map[string]requestRecord
	order    []string
	// marks are the usage thresholds fired, persisted with the counters.
	marks quota.ThresholdMarks
}

// requestTTL is shorter than quota.RequestTTL: in one process an admission
// cannot reach the store after its caller gave up, so a record only has to
// cover a repeat or a settlement that follows at once.
const requestTTL = 10 * time.Second

// lease is a held reservation: the charges that release it, and when the
// store releases it by itself.
type lease struct {
	expires time.Time
	release []heldCharge
	// spent: the lease expired once and keeps only its kept charges, for
	// spentFor, so that a late settlement still replaces them.
	spent bool
}

// spentFor is how long a kept charge of an expired lease waits for a late
// settlement (a stream longer than its hold, a replay after an outage)
// before it is dropped, still counted.
const spentFor = 24 * time.Hour

// heldCharge is one counter a lease holds: how much, and in which window
// (a lease releases only from the window it was taken in; the next window
// never held it).
type heldCharge struct {
	resource string
	per      quota.Period
	start    time.Time // zero: whatever window is current (a lease stored before starts were)
	amount   int64
	keep     bool // stays counted if the lease expires (quota.Charge.Keep)
}

// release takes back what a lease holds; with expired (the lease ran out,
// its request never settled), kept charges stay counted.
func (e *entry) release(l lease, now time.Time, expired bool) {
	for _, h := range l.release {
		if expired && h.keep {
			continue
		}
		key := quota.CounterKey(h.resource, h.per)
		cur, ok := e.counters[key]
		start, _ := h.per.Window(now)
		if !ok || !cur.Start.Equal(start) || (!h.start.IsZero() && !h.start.Equal(start)) {
			continue
		}
		cur.Used = max(cur.Used-h.amount, 0)
		e.counters[key] = cur
	}
}

// hold records a lease on the held charges of a request.
func (e *entry) hold(requestID string, charges []quota.Charge, now time.Time) {
	var l lease
	for _, c := range charges {
		if c.Hold <= 0 {
			continue
		}
		start, _ := c.Per.Window(now)
		l.release = append(l.release, heldCharge{resource: c.Resource, per: c.Per, start: start, amount: c.Amount, keep: c.Keep})
		if exp := now.Add(c.Hold); exp.After(l.expires) {
			l.expires = exp
		}
	}
	if len(l.release) == 0 {
		return
	}
	if e.leases == nil {
		e.leases = map[string]lease{}
	}
	e.leases[requestID] = l
}

// sweep releases the leases that have expired and reports whether any did.
func (e *entry) sweep(now time.Time) bool {
	swept := false
	for id, l := range e.leases {
		if !now.Before(l.expires) {
			swept = true
			if l.spent {
				delete(e.leases, id) // stays counted
				continue
			}
			e.release(l, now, true)
			var kept []heldCharge
			for _, h := range l.release {
				if h.keep {
					kept = append(kept, h)
				}
			}
			if len(kept) == 0 {
				delete(e.leases, id)
				continue
			}
			e.leases[id] = lease{expires: now.Add(spentFor), release: kept, spent: true}
		}
	}
	return swept
}

type requestRecord struct {
	applied bool
	at      time.Time
}

// request returns the live record of a request id.
func (e *entry) request(id string, now time.Time) (requestRecord, bool) {
	e.expire(now)
	r, ok := e.requests[id]
	return r, ok
}

func (e *entry) remember(id string, applied bool, now time.Time) {
	e.expire(now)
	if e.requests == nil {
		e.requests = map[string]requestRecord{}
	}
	if _, ok := e.requests[id]; !ok {
		e.order = append(e.order, id)
	}
	e.requests[id] = requestRecord{applied: applied, at: now}
}

// expire drops the records older than requestTTL.
func (e *entry) expire(now time.Time) {
	n := 0
	for n < len(e.order) && now.Sub(e.requests[e.order[n]].at) >= requestTTL {
		delete(e.requests, e.order[n])
		n++
	}
	if n == 0 {
		return
	}
	e.order = e.order[n:]
	if len(e.order) == 0 {
		e.order = nil
	} else if cap(e.order) > 2*len(e.order)+1024 {
		e.order = append([]string(nil), e.order...)
	}
}

// countersDoc is the stored form of a user's counters and distinct keys.
// The first format was the bare counters map; a document carries "v", which
// no counter key can be (they all hold a '|').
type countersDoc struct {
	V        int                      `json:"v"`
	Counters map[string]counterRecord `json:"counters"`
	Keys     []string                 `json:"keys,omitempty"`
	Leases   map[string]leaseRecord   `json:"leases,omitempty"`
	Marks    quota.ThresholdMarks     `json:"marks,omitempty"`
}

type leaseRecord struct {
	Expires time.Time      `json:"expires"`
	Release []chargeRecord `json:"release"`
	Spent   bool           `json:"spent,omitempty"`
}

type chargeRecord struct {
	Resource string `json:"resource"`
	Per      string `json:"per,omitempty"`
	// Amount is negative (what releasing adds); Start is the window's
	// start (unix seconds; 0 for lifetime, or a lease stored before it was).
	Amount int64 `json:"amount"`
	Start  int64 `json:"start,omitempty"`
	Keep   bool  `json:"keep,omitempty"`
}

func decodeCounters(data []byte) (countersDoc, error) {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return countersDoc{}, err
	}
	var doc countersDoc
	if _, ok := probe["v"]; ok {
		err := json.Unmarshal(data, &doc)
		return doc, err
	}
	err := json.Unmarshal(data, &doc.Counters)
	return doc, err
}

// counterRecord is the stored form of one counter; it is decoupled from
// quota.CounterState so the file format does not follow Go field names.
type counterRecord struct {
	Start time.Time `json:"start"`
	Used  int64     `json:"used"`
}

func (s *Store) shardOf(userID string) *shard {
	return &s.shards[maphash.String(shardSeed, userID)%shardCount]
}

// drop forgets a deleted user's counters. The caller holds sh.mu.
func (sh *shard) drop(userID string, now time.Time) {
	delete(sh.entries, userID)
	delete(sh.dirty, userID)
	if sh.gone == nil {
		sh.gone = map[string]time.Time{}
	}
	for id, at := range sh.gone {
		if now.Sub(at) > goneFor {
			delete(sh.gone, id)
		}
	}
	sh.gone[userID] = now
}

// isGone reports whether userID was deleted lately (the caller holds
// sh.mu).
func (sh *shard) isGone(userID string, now time.Time) bool {
	at, ok := sh.gone[userID]
	return ok && now.Sub(at) <= goneFor
}

// load returns the user's counters, reading them from disk on first use.
// The caller holds sh.mu, so a user is loaded at most once and never
// while DeleteUser runs. Counters do not require the user to exist.
func (s *Store) load(sh *shard, userID string) (*entry, error) {
	if e := sh.entries[userID]; e != nil {
		return e, nil
	}
	e := &entry{counters: make(map[string]quota.CounterState), keys: make(map[string]struct{})}
	err := s.db.View(func(tx *bolt.Tx) error {
		data := tx.Bucket(bucketCounters).Get([]byte(userID))
		if data == nil {
			return nil
		}
		doc, err := decodeCounters(data)
		if err != nil {
			return fmt.Errorf("boltstore: decode counters of user %q: %w", userID, err)
		}
		for k, r := range doc.Counters {
			e.counters[k] = quota.CounterState(r)
		}
		for _, k := range doc.Keys {
			e.keys[k] = struct{}{}
		}
		e.marks = doc.Marks
		for id, lr := range doc.Leases {
			l := lease{expires: lr.Expires, spent: lr.Spent}
			for _, c := range lr.Release {
				h := heldCharge{resource: c.Resource, per: quota.Period(c.Per), amount: -c.Amount, keep: c.Keep}
				if c.Start != 0 {
					h.start = time.Unix(c.Start, 0).UTC()
				}
				l.release = append(l.release, h)
			}
			if e.leases == nil {
				e.leases = map[string]lease{}
			}
			e.leases[id] = l
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sh.entries[userID] = e
	return e, nil
}

// withUser runs fn on the user's counters under the user's shard lock, with
// the store's time read under that lock so the windows one user sees never
// go backwards between calls.
func (s *Store) withUser(ctx context.Context, userID string, fn func(e *entry, now time.Time) (changed bool)) error {
	if err := s.begin(ctx); err != nil {
		return err
	}
	sh := s.shardOf(userID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	// Checked again under the lock: Close sets closed before its final
	// flush takes this lock, so a change made here is always flushed.
	if s.closed.Load() {
		return ErrClosed
	}
	e, err := s.load(sh, userID)
	if err != nil {
		return err
	}
	now := s.clock.Now()
	swept := e.sweep(now)
	if fn(e, now) || swept {
		sh.dirty[userID] = e
	}
	// Reading an unknown id must not grow memory.
	if _, pending := sh.dirty[userID]; !pending && len(e.counters) == 0 && len(e.keys) == 0 && len(e.leases) == 0 && len(e.requests) == 0 {
		delete(sh.entries, userID)
	}
	return nil
}

// Admit applies all charges of one user atomically with quota.ApplyCharges,
// in memory; the counters reach the disk with the next flush (see the
// package doc for what a crash can lose).
func (s *Store) Admit(ctx context.Context, userID, requestID string, charges []quota.Charge) (*quota.Admission, error) {
	if err := quota.ValidateAdmission(requestID, charges); err != nil {
		return nil, err
	}
	var adm *quota.Admission
	cancelled, gone := false, false
	sh := s.shardOf(userID)
	err := s.withUser(ctx, userID, func(e *entry, now time.Time) bool {
		if gone = sh.isGone(userID, now); gone {
			return false
		}
		if requestID != "" {
			if r, ok := e.request(requestID, now); ok {
				if !r.applied {
					cancelled = true
					return false
				}
				// A repeat: report the counters, charge nothing.
				adm = quota.ApplyKeyedCharges(e.counters, nil, 0, quota.Unlimited(charges, 0), now)
				return false
			}
		}
		adm = quota.ApplyKeyedCharges(e.counters, e.keys, s.keyCap, charges, now)
		if adm.Allowed && requestID != "" {
			e.remember(requestID, true, now)
			e.hold(requestID, charges, now)
		}
		if adm.Allowed {
			s.thresholds(e, userID, requestID, charges, now)
		}
		return adm.Allowed && len(charges) > 0
	})
	if err != nil {
		return nil, err
	}
	if cancelled {
		return nil, fmt.Errorf("admit: request %s: %w", requestID, quota.ErrCancelled)
	}
	if gone {
		return nil, fmt.Errorf("admit: user %s was deleted: %w", userID, quota.ErrUnauthenticated)
	}
	return adm, nil
}

// Resolve settles a request whose admission outcome the caller could not
// see; see quota.Store.
func (s *Store) Resolve(ctx context.Context, userID, requestID string, charges []quota.Charge, apply bool) error {
	if err := quota.ValidateSettlement(requestID, charges); err != nil {
		return err
	}
	sh := s.shardOf(userID)
	return s.withUser(ctx, userID, func(e *entry, now time.Time) bool {
		if sh.isGone(userID, now) {
			return false // a deleted user keeps nothing
		}
		r, ok := e.request(requestID, now)
		if ok && (!r.applied || apply) {
			return false
		}
		changed := false
		switch {
		case apply:
			quota.ApplyKeyedCharges(e.counters, e.keys, s.keyCap, quota.Unlimited(charges, 1), now)
			e.hold(requestID, charges, now)
			changed = true
		case ok && r.applied:
			quota.ApplyKeyedCharges(e.counters, e.keys, s.keyCap, quota.Unlimited(charges, -1), now)
			delete(e.leases, requestID)
			changed = true
		}
		e.remember(requestID, apply, now)
		return changed
	})
}

// Settle ends a served request exactly once; see quota.Store.
func (s *Store) Settle(ctx context.Context, userID, requestID string, actual []quota.Charge) error {
	if err := quota.ValidateSettlement(requestID, actual); err != nil {
		return err
	}
	settleID := requestID + "/settle"
	sh := s.shardOf(userID)
	return s.withUser(ctx, userID, func(e *entry, now time.Time) bool {
		if sh.isGone(userID, now) {
			return false // a deleted user keeps nothing
		}
		if _, done := e.request(settleID, now); done {
			return false
		}
		quota.ApplyKeyedCharges(e.counters, e.keys, s.keyCap, quota.Unlimited(actual, 1), now)
		if l, ok := e.leases[requestID]; ok {
			e.release(l, now, false)
			delete(e.leases, requestID)
		}
		e.remember(settleID, true, now)
		s.thresholds(e, userID, requestID+"-s", actual, now)
		return true
	})
}

// thresholds fires the usage thresholds a step reached (under the shard
// lock); the events reach the disk with the counters.
func (s *Store) thresholds(e *entry, userID, idBase string, charges []quota.Charge, now time.Time) {
	if len(s.percents) == 0 || idBase == "" {
		return
	}
	if e.marks == nil {
		e.marks = quota.ThresholdMarks{}
	}
	s.queueEvents(quota.Thresholds(s.percents, charges, e.counters, e.marks, userID, idBase, now))
}

// Usage returns the user's counters, ordered by resource and period, with
// the store's current time.
func (s *Store) Usage(ctx context.Context, userID string) (*quota.UsageSnapshot, error) {
	snap := &quota.UsageSnapshot{Counters: []quota.Counter{}}
	err := s.withUser(ctx, userID, func(e *entry, now time.Time) bool {
		snap.Now = now
		for k, st := range e.counters {
			resource, per, ok := quota.ParseCounterKey(k)
			if !ok {
				continue
			}
			snap.Counters = append(snap.Counters, quota.Counter{Resource: resource, Per: per, Start: st.Start, Used: st.Used})
		}
		return false
	})
	if err != nil {
		return nil, err
	}
	quota.SortCounters(snap.Counters)
	return snap, nil
}

// ResetUsage removes the counters (every period) of the named resources, or
// all of the user's counters if resources is empty, and writes the change
// through before it returns.
func (s *Store) ResetUsage(ctx context.Context, userID string, resources []string, events ...quota.Event) error {
	names := make(map[string]bool, len(resources))
	for _, r := range resources {
		names[r] = true
	}
	reset := func(resource string) bool {
		if len(names) == 0 {
			return !quota.KeptByFullReset(resource)
		}
		return names[resource]
	}
	err := s.withUser(ctx, userID, func(e *entry, now time.Time) bool {
		changed := false
		for k := range e.counters {
			resource, _, _ := quota.ParseCounterKey(k)
			if _, r, ok := quota.SplitTokenResource(resource); ok {
				resource = r // a token's own counter goes with its resource
			}
			if reset(resource) {
				delete(e.counters, k)
				changed = true
			}
		}
		for k := range e.keys {
			resource, _, _ := strings.Cut(k, "|")
			if _, r, ok := quota.SplitTokenResource(resource); ok {
				resource = r // as for the counters (Redis does the same)
			}
			if reset(resource) {
				delete(e.keys, k)
				changed = true
			}
		}
		if len(e.marks) > 0 {
			e.marks.ForgetMarks(resources)
			changed = true
		}
		// What requests in flight and slices hold stays counted: their
		// settlement takes it back from the window it was taken in, which
		// must not be usage that never held it.
		for _, l := range e.leases {
			for _, h := range l.release {
				resource := h.resource
				if _, r, ok := quota.SplitTokenResource(resource); ok {
					resource = r
				}
				start, _ := h.per.Window(now)
				if !reset(resource) || (!h.start.IsZero() && !h.start.Equal(start)) {
					continue
				}
				key := quota.CounterKey(h.resource, h.per)
				cur := e.counters[key]
				if !cur.Start.Equal(start) {
					cur = quota.CounterState{Start: start}
				}
				cur.Used = min(cur.Used+h.amount, quota.MaxCounter)
				e.counters[key] = cur
				changed = true
			}
		}
		// Under the shard lock, so the events reach the disk with the
		// reset (the flush below writes both in one transaction).
		s.queueEvents(events)
		return changed
	})
	if err != nil {
		return err
	}
	return s.flush()
}

// Flush writes every changed counter to disk now. The background flusher
// and Close call it; callers need it only to bound what a crash could lose
// at a moment of their choosing.
func (s *Store) Flush() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return s.flush()
}

type snapshot struct {
	userID string
	sh     *shard
	e      *entry
	data   []byte
}

func (s *Store) flush() error {
	s.flushMu.Lock()
	defer s.flushMu.Unlock()
	var snaps []snapshot
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		for id, e := range sh.dirty {
			var data []byte
			if len(e.counters) > 0 || len(e.keys) > 0 || len(e.leases) > 0 || len(e.marks) > 0 {
				doc := countersDoc{V: 2, Counters: make(map[string]counterRecord, len(e.counters)), Marks: e.marks}
				for k, st := range e.counters {
					doc.Counters[k] = counterRecord(st)
				}
				for k := range e.keys {
					doc.Keys = append(doc.Keys, k)
				}
				for id, l := range e.leases {
					if doc.Leases == nil {
						doc.Leases = map[string]leaseRecord{}
					}
					lr := leaseRecord{Expires: l.expires, Spent: l.spent}
					for _, h := range l.release {
						c := chargeRecord{Resource: h.resource, Per: string(h.per), Amount: -h.amount, Keep: h.keep}
						if !h.start.IsZero() {
							c.Start = h.start.Unix()
						}
						lr.Release = append(lr.Release, c)
					}
					doc.Leases[id] = lr
				}
				var err error
				if data, err = json.Marshal(doc); err != nil {
					sh.mu.Unlock()
					s.redirty(snaps)
					return fmt.Errorf("boltstore: encode counters of user %q: %w", id, err)
				}
			}
			snaps = append(snaps, snapshot{userID: id, sh: sh, e: e, data: data})
			delete(sh.dirty, id)
		}
		sh.mu.Unlock()
	}
	events := s.takeEvents()
	if len(snaps) == 0 && len(events) == 0 {
		return nil
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		if err := putEvents(tx, events); err != nil {
			return err
		}
		users := tx.Bucket(bucketUsers)
		counters := tx.Bucket(bucketCounters)
		for _, sn := range snaps {
			key := []byte(sn.userID)
			// Counters of ids that are not (or no longer) users stay in
			// memory only, so the file holds no orphans.
			if users.Get(key) == nil {
				continue
			}
			var err error
			if sn.data == nil {
				err = counters.Delete(key)
			} else {
				err = counters.Put(key, sn.data)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.redirty(snaps)
		s.requeueEvents(events)
		return fmt.Errorf("boltstore: flush counters: %w", err)
	}
	return nil
}

// queueEvents holds events decided with a change of counters in memory
// (a reset, a threshold reached); they reach the disk with the counters,
// in the next flush, in the same transaction.
func (s *Store) queueEvents(events []quota.Event) {
	if len(events) == 0 {
		return
	}
	s.evMu.Lock()
	s.pendingEvents = append(s.pendingEvents, events...)
	s.evMu.Unlock()
}

func (s *Store) takeEvents() []quota.Event {
	s.evMu.Lock()
	defer s.evMu.Unlock()
	evs := s.pendingEvents
	s.pendingEvents = nil
	return evs
}

// requeueEvents puts back, first, events a failed flush did not write.
func (s *Store) requeueEvents(events []quota.Event) {
	if len(events) == 0 {
		return
	}
	s.evMu.Lock()
	s.pendingEvents = append(events, s.pendingEvents...)
	s.evMu.Unlock()
}

// redirty marks snapshotted entries dirty again after a failed flush, unless
// their user was deleted meanwhile.
func (s *Store) redirty(snaps []snapshot) {
	for _, sn := range snaps {
		sn.sh.mu.Lock()
		if sn.sh.entries[sn.userID] == sn.e {
			sn.sh.dirty[sn.userID] = sn.e
		}
		sn.sh.mu.Unlock()
	}
}

func (s *Store) flushLoop(interval time.Duration) {
	defer close(s.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			if err := s.flush(); err != nil && s.onFlushError != nil {
				s.onFlushError(err)
			}
		}
	}
}
