package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// Sink takes events somewhere. Deliver returns nil once the event is
// taken; any error means "try again later". It must honour ctx.
type Sink interface {
	// Name identifies the sink's cursor in the outbox: keep it stable
	// across restarts, or the sink starts over. It may be logged only if
	// the sink is not a fmt.Stringer (whose String is logged instead).
	Name() string
	// Accepts reports whether the sink wants events of type typ.
	Accepts(typ string) bool
	// Deliver sends one event; body is ev as JSON.
	Deliver(ctx context.Context, ev quota.CloudEvent, body []byte) error
}

// formerNamer is a Sink that an older version named otherwise: a sink
// with no cursors of its own takes over those of FormerName ("" for
// none), so that a rename does not restart it from new events.
type formerNamer interface {
	FormerName() string
}

// label names s in log lines: its String if it has one (a webhook's keeps
// the URL's secrets out), else its Name.
func label(s Sink) string {
	if st, ok := s.(fmt.Stringer); ok {
		return st.String()
	}
	return s.Name()
}

// Retry bounds how a failing event is retried. The zero value takes the
// defaults.
type Retry struct {
	// Min and Max bound the backoff between attempts (default 1s and 5m):
	// it doubles from Min, with ±25 % jitter.
	Min, Max time.Duration
	// Attempts is the most attempts of one event (default 15), MaxAge the
	// longest time after its first failure (default 24h); whichever comes
	// first gives the event up.
	Attempts int
	MaxAge   time.Duration
}

func (r Retry) withDefaults() Retry {
	if r.Min <= 0 {
		r.Min = time.Second
	}
	if r.Max <= 0 {
		r.Max = 5 * time.Minute
	}
	if r.Attempts <= 0 {
		r.Attempts = 15
	}
	if r.MaxAge <= 0 {
		r.MaxAge = 24 * time.Hour
	}
	return r
}

// backoff is the wait after the n-th failed attempt (n >= 1).
func (r Retry) backoff(n int) time.Duration {
	d := r.Min << min(n-1, 30)
	if d <= 0 || d > r.Max {
		d = r.Max
	}
	jitter := time.Duration(rand.Int64N(int64(d)/2+1)) - d/4
	return d + jitter
}

// Options configure a Dispatcher. Log and Holder are required; with no
// Sinks, a dispatcher only trims old events.
type Options struct {
	Log   quota.EventLog
	Sinks []Sink
	// Holder names this node for the delivery lease (unique per process).
	// Only a dispatcher with sinks takes the lease: one without would hold
	// it and deliver nothing.
	Holder string
	// Source is the CloudEvents source (quota.DefaultEventSource).
	Source string
	Logger *zap.Logger
	Retry  Retry
	// Poll is how often the outbox is read when nothing wakes the
	// dispatcher (default 1s); LeaseTTL how long the lease outlives a
	// node that stops renewing it (default 10s).
	Poll, LeaseTTL time.Duration
	// Retention drops events older than this (0: keep them).
	Retention time.Duration
	// LockFor, if set, returns the lock held while delivering to the sink
	// of that name, so that two dispatchers of one process (a config
	// reload) never deliver to one sink at once. Each sink has its own: a
	// dead sink never holds another back.
	LockFor func(sink string) sync.Locker
}

// Dispatcher delivers the outbox to sinks. It is safe for concurrent use.
type Dispatcher struct {
	opts   Options
	log    *zap.Logger
	leader atomic.Bool
	wake   chan struct{}
	ready  chan struct{}      // closed once every sink is started
	stats  map[string]*counts // by sink name
}

type counts struct{ sent, retried, gaveUp atomic.Int64 }

// New returns a Dispatcher; Run starts it.
func New(opts Options) (*Dispatcher, error) {
	if opts.Log == nil || opts.Holder == "" {
		return nil, errors.New("events: an event log and a holder name are required")
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = 10 * time.Second
	}
	opts.Retry = opts.Retry.withDefaults()
	d := &Dispatcher{opts: opts, log: opts.Logger, wake: make(chan struct{}, 1), ready: make(chan struct{}), stats: map[string]*counts{}}
	for _, s := range opts.Sinks {
		d.stats[s.Name()] = &counts{}
	}
	return d, nil
}

// Kick wakes the dispatcher to look for new events now.
func (d *Dispatcher) Kick() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Ready is closed once Run has started every sink (quota.EventLog's
// StartSink): a sink new to the store gets the events written from then
// on. Run waits for the store to start them, and delivers nothing before.
func (d *Dispatcher) Ready() <-chan struct{} { return d.ready }

// Stats are the dispatcher's counts since it started.
type Stats struct{ Sent, Retried, GaveUp int64 }

// Stats returns the counts of events delivered, attempts that failed and
// events given up, over every sink.
func (d *Dispatcher) Stats() Stats {
	var t Stats
	for _, s := range d.SinkStats() {
		t.Sent, t.Retried, t.GaveUp = t.Sent+s.Sent, t.Retried+s.Retried, t.GaveUp+s.GaveUp
	}
	return t
}

// SinkStats returns the counts by sink name.
func (d *Dispatcher) SinkStats() map[string]Stats {
	out := make(map[string]Stats, len(d.stats))
	for name, c := range d.stats {
		out[name] = Stats{Sent: c.sent.Load(), Retried: c.retried.Load(), GaveUp: c.gaveUp.Load()}
	}
	return out
}

// Run delivers until ctx is done, then closes the sinks that are
// io.Closers.
func (d *Dispatcher) Run(ctx context.Context) {
	defer func() {
		for _, s := range d.opts.Sinks {
			if c, ok := s.(io.Closer); ok {
				_ = c.Close()
			}
		}
	}()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); d.lead(ctx) }()
	if !d.startSinks(ctx) {
		wg.Wait()
		return
	}
	close(d.ready)
	wakes := make([]chan struct{}, len(d.opts.Sinks))
	for i, s := range d.opts.Sinks {
		wakes[i] = make(chan struct{}, 1)
		wg.Add(1)
		go func() { defer wg.Done(); d.runSink(ctx, s, wakes[i]) }()
	}
	// Fan a wake-up out to every sink.
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-d.wake:
			for _, w := range wakes {
				select {
				case w <- struct{}{}:
				default:
				}
			}
		}
	}
}

// startSinks starts every sink in the store, trying again every Poll
// while the store fails; false if ctx ended first.
func (d *Dispatcher) startSinks(ctx context.Context) bool {
	for _, s := range d.opts.Sinks {
		former := ""
		if f, ok := s.(formerNamer); ok {
			former = f.FormerName()
		}
		for {
			err := d.opts.Log.StartSink(ctx, s.Name(), former)
			if err == nil {
				break
			}
			if ctx.Err() == nil {
				d.log.Warn("starting an event sink; trying again", zap.String("sink", label(s)), zap.Error(err))
			}
			select {
			case <-ctx.Done():
				return false
			case <-time.After(d.opts.Poll):
			}
		}
	}
	return true
}

// lead takes and renews the delivery lease, and trims old events while it
// holds it. With no sink it takes no lease and trims anyway: trimming is
// idempotent, and a cluster whose nodes have no sinks still trims.
func (d *Dispatcher) lead(ctx context.Context) {
	t := time.NewTicker(d.opts.LeaseTTL / 3)
	defer t.Stop()
	var lastTrim time.Time
	for {
		trims := true // with the lease, or with no sink to compete for it
		if len(d.opts.Sinks) > 0 {
			ok, err := d.opts.Log.LeadEvents(ctx, d.opts.Holder, d.opts.LeaseTTL)
			if err != nil && ctx.Err() == nil {
				d.log.Warn("renewing the event delivery lease", zap.Error(err))
			}
			trims = ok && err == nil
			if was := d.leader.Swap(trims); trims && !was {
				d.Kick()
			}
		}
		if trims && d.opts.Retention > 0 && time.Since(lastTrim) > time.Minute {
			lastTrim = time.Now()
			if err := d.opts.Log.TrimEvents(ctx, time.Now().Add(-d.opts.Retention)); err != nil && ctx.Err() == nil {
				d.log.Warn("trimming old events", zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// failing is the retry state of the event at the head of a partition.
type failing struct {
	id       string
	attempts int
	first    time.Time
	next     time.Time
}

func (d *Dispatcher) runSink(ctx context.Context, s Sink, wake <-chan struct{}) {
	heads := map[string]*failing{}
	for {
		wait := d.opts.Poll
		if d.leader.Load() {
			if next := d.round(ctx, s, heads); next > 0 && next < wait {
				wait = next
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-wake:
		case <-time.After(wait):
		}
	}
}

// round delivers what each partition holds for s, and returns how soon a
// retry is due (0: none).
func (d *Dispatcher) round(ctx context.Context, s Sink, heads map[string]*failing) time.Duration {
	if d.opts.LockFor != nil {
		l := d.opts.LockFor(s.Name())
		l.Lock()
		defer l.Unlock()
	}
	parts, err := d.opts.Log.EventPartitions(ctx)
	if err != nil {
		if ctx.Err() == nil {
			d.log.Warn("listing event partitions", zap.Error(err))
		}
		return 0
	}
	var soonest time.Duration
	for _, p := range parts {
		if wait := d.drain(ctx, s, p, heads); wait > 0 && (soonest == 0 || wait < soonest) {
			soonest = wait
		}
	}
	return soonest
}

// drain delivers partition p to s in order until it is empty or an event
// fails; it returns how soon the failed event is due again.
func (d *Dispatcher) drain(ctx context.Context, s Sink, p string, heads map[string]*failing) time.Duration {
	for ctx.Err() == nil && d.leader.Load() {
		evs, err := d.opts.Log.ReadEvents(ctx, p, s.Name(), 100)
		if err != nil {
			if ctx.Err() == nil {
				d.log.Warn("reading events", zap.String("sink", label(s)), zap.Error(err))
			}
			return 0
		}
		if len(evs) == 0 {
			return 0
		}
		for _, e := range evs {
			if ctx.Err() != nil {
				return 0
			}
			if h := heads[p]; h != nil && h.id == e.ID && time.Now().Before(h.next) {
				return time.Until(h.next)
			}
			if wait, ok, err := d.deliverAndAck(ctx, s, p, e, heads); !ok || err != nil {
				if err != nil && ctx.Err() == nil {
					d.log.Warn("moving an event cursor", zap.String("sink", label(s)), zap.Error(err))
				}
				return wait
			}
		}
	}
	return 0
}

// stopGrace is how long a delivery under way when the dispatcher stops
// (a reload, a clean shutdown) may go on and its cursor move. Cut at once,
// the event the sink has just taken would be sent again by the next
// dispatcher; the grace bounds how long a stop can wait on a slow sink.
const stopGrace = 2 * time.Second

// grace is stopGrace, or a third of the lease if shorter: the lease is
// renewed every third of it, so a stopping dispatcher still holds it for
// the whole grace, and no other node delivers (or moves a cursor) while
// its last delivery ends.
func (d *Dispatcher) grace() time.Duration { return min(stopGrace, d.opts.LeaseTTL/3) }

// deliverAndAck delivers e to s (unless s does not take its type) and
// moves s's cursor past it, on a context that outlives ctx by the grace.
// ok false: e is to be retried after wait; err: the cursor did not move.
func (d *Dispatcher) deliverAndAck(ctx context.Context, s Sink, p string, e quota.Event, heads map[string]*failing) (wait time.Duration, ok bool, err error) {
	ectx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	// Once ctx ends, cancel after the grace (a timer left to fire after
	// the delivery ended cancels nothing).
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(d.grace(), cancel) })
	defer stop()
	if s.Accepts(e.Type) {
		if wait, ok := d.deliver(ctx, ectx, s, p, e, heads); !ok {
			return wait, false, nil
		}
	}
	return 0, true, d.opts.Log.AckEvent(ectx, p, s.Name(), e.Pos)
}

// deliver makes one attempt on dctx; ok is false when the event is to be
// retried after wait. An event out of attempts or time is given up (ok
// true). A failure once ctx (the dispatcher's) has ended is not counted:
// the next dispatcher sends the event.
func (d *Dispatcher) deliver(ctx, dctx context.Context, s Sink, p string, e quota.Event, heads map[string]*failing) (wait time.Duration, ok bool) {
	ce := e.CloudEvent(d.opts.Source)
	body, err := json.Marshal(ce)
	if err == nil {
		err = s.Deliver(dctx, ce, body)
	}
	c := d.stats[s.Name()]
	if err == nil {
		delete(heads, p)
		c.sent.Add(1)
		return 0, true
	}
	if ctx.Err() != nil {
		return 0, false
	}
	h := heads[p]
	if h == nil || h.id != e.ID {
		h = &failing{id: e.ID, first: time.Now()}
		heads[p] = h
	}
	h.attempts++
	c.retried.Add(1)
	if h.attempts >= d.opts.Retry.Attempts || time.Since(h.first) >= d.opts.Retry.MaxAge {
		delete(heads, p)
		c.gaveUp.Add(1)
		d.log.Warn("event delivery given up; the event stays readable through GET /events",
			zap.String("sink", label(s)), zap.String("event_id", e.ID), zap.String("type", e.Type),
			zap.String("user_id", e.Subject), zap.Int("attempts", h.attempts), zap.Error(err))
		return 0, true
	}
	wait = d.opts.Retry.backoff(h.attempts)
	h.next = time.Now().Add(wait)
	d.log.Info("event delivery failed; retrying", zap.String("sink", label(s)), zap.String("event_id", e.ID),
		zap.Int("attempt", h.attempts), zap.Duration("retry_in", wait), zap.Error(err))
	return wait, false
}
