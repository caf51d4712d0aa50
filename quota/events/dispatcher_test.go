package events_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"

	"github.com/tenantquota/caddy-tenant-quota/internal/quotatest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/events"
)

const secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

// receiver is a webhook endpoint that verifies every delivery with the
// standard-webhooks library and records what it accepted.
type receiver struct {
	*httptest.Server
	mu       sync.Mutex
	got      []quota.CloudEvent
	ids      map[string]int // webhook-id -> attempts seen
	failing  atomic.Int64   // answer 500 to this many more requests
	badSigns atomic.Int64
}

func newReceiver(t *testing.T) *receiver {
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	rc := &receiver{ids: map[string]int{}}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if err := wh.Verify(body, r.Header); err != nil {
			rc.badSigns.Add(1)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		rc.mu.Lock()
		defer rc.mu.Unlock()
		id := r.Header.Get("webhook-id")
		rc.ids[id]++
		if rc.failing.Load() > 0 {
			rc.failing.Add(-1)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		var ce quota.CloudEvent
		if err := json.Unmarshal(body, &ce); err != nil || ce.ID != id || ce.SpecVersion != "1.0" {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		rc.got = append(rc.got, ce)
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) events() []quota.CloudEvent {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]quota.CloudEvent(nil), rc.got...)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWebhookDelivery: every event reaches a webhook once it answers 2xx,
// signed so that the standard-webhooks library verifies it, in order per
// user; an endpoint that fails for a while gets the same webhook-id again
// and the event after it recovers.
func TestWebhookDelivery(t *testing.T) {
	t.Parallel()
	store, svc := quotatest.Embedded(t)
	rc := newReceiver(t)
	rc.failing.Store(3)
	hook, err := events.NewWebhook(events.WebhookOptions{URL: rc.URL, Secrets: []string{secret}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := events.New(events.Options{Log: store, Sinks: []events.Sink{hook}, Holder: "test", Poll: 20 * time.Millisecond,
		Retry: events.Retry{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}})
	if err != nil {
		t.Fatal(err)
	}
	run(t, d)

	actx := quota.WithActor(context.Background(), "ops")
	var users []string
	for i := range 3 {
		u, err := svc.CreateUser(actx, quota.NewUser{Name: "W", Email: fmt.Sprintf("w%d@example.com", i)})
		if err != nil {
			t.Fatal(err)
		}
		users = append(users, u.ID)
		if _, err := svc.PatchLimits(actx, u.ID, quota.Limits{"tokens": {{Limit: 100}}}); err != nil {
			t.Fatal(err)
		}
	}
	d.Kick()
	waitFor(t, "9 events delivered", func() bool { return len(rc.events()) == 9 && d.Stats().Sent == 9 })
	perUser := map[string][]string{}
	for _, ce := range rc.events() {
		if ce.Actor != "ops" || ce.Source != quota.DefaultEventSource {
			t.Fatalf("event %+v", ce)
		}
		perUser[ce.Subject] = append(perUser[ce.Subject], ce.Type)
	}
	for _, u := range users {
		if fmt.Sprint(perUser[u]) != "[user.created user.updated limits.updated]" {
			t.Fatalf("events of %s out of order: %v", u, perUser[u])
		}
	}
	rc.mu.Lock()
	first := rc.got[0].ID
	attempts := rc.ids[first]
	rc.mu.Unlock()
	if attempts != 4 || rc.badSigns.Load() != 0 {
		t.Fatalf("the first event was tried %d times (3 failures, then accepted), %d bad signatures", attempts, rc.badSigns.Load())
	}
	if st := d.Stats(); st.Sent != 9 || st.Retried != 3 || st.GaveUp != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestWebhookGivesUp: an endpoint that never takes an event holds it back
// for a bounded number of attempts, then the next events go through.
func TestWebhookGivesUp(t *testing.T) {
	t.Parallel()
	store, svc := quotatest.Embedded(t)
	rc := newReceiver(t)
	rc.failing.Store(4)
	hook, _ := events.NewWebhook(events.WebhookOptions{URL: rc.URL, Secrets: []string{secret}, Types: events.Types{"user.created"}})
	d, _ := events.New(events.Options{Log: store, Sinks: []events.Sink{hook}, Holder: "test", Poll: 20 * time.Millisecond,
		Retry: events.Retry{Min: 5 * time.Millisecond, Max: 10 * time.Millisecond, Attempts: 4}})
	run(t, d)
	for i := range 2 {
		if _, err := svc.CreateUser(context.Background(), quota.NewUser{Name: "G", Email: fmt.Sprintf("g%d@example.com", i)}); err != nil {
			t.Fatal(err)
		}
	}
	// The receiver holds the event before the dispatcher has its answer
	// and counts it sent.
	waitFor(t, "the second event after the first was given up", func() bool { return len(rc.events()) == 1 && d.Stats().Sent == 1 })
	if st := d.Stats(); st.GaveUp != 1 || st.Sent != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestParseSecret(t *testing.T) {
	t.Parallel()
	for _, bad := range []string{"", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_!!", "whsec_c2hvcnQ="} {
		if _, err := events.ParseSecret(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if _, err := events.ParseSecret(secret); err != nil {
		t.Fatal(err)
	}
}

// TestRetention: with no sink at all, the dispatcher trims events older
// than the retention.
func TestRetention(t *testing.T) {
	t.Parallel()
	store, svc := quotatest.Embedded(t)
	if _, err := svc.CreateUser(context.Background(), quota.NewUser{Name: "R", Email: "r@example.com"}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	d, _ := events.New(events.Options{Log: store, Holder: "test", Retention: time.Millisecond})
	run(t, d)
	waitFor(t, "the old event trimmed", func() bool {
		page, err := store.ListEvents(context.Background(), quota.EventQuery{Take: 10})
		return err == nil && len(page.Events) == 0
	})
}

// run runs d until the test ends, or until stop is called, once its sinks
// are ready: events written after run returns reach them.
func run(t *testing.T, d *events.Dispatcher) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	stop = func() { cancel(); <-done }
	t.Cleanup(stop)
	select {
	case <-d.Ready():
	case <-time.After(10 * time.Second):
		t.Fatal("the dispatcher's sinks not ready within 10s")
	}
	return stop
}

// TestDeadSinkHoldsBackOnlyItself: a webhook that never answers does not
// delay another sink, even with per-sink delivery locks in place.
func TestDeadSinkHoldsBackOnlyItself(t *testing.T) {
	t.Parallel()
	store, svc := quotatest.Embedded(t)
	release := make(chan struct{})
	dead := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(dead.Close)
	rc := newReceiver(t)
	deadHook, _ := events.NewWebhook(events.WebhookOptions{URL: dead.URL, Secrets: []string{secret}, Timeout: 30 * time.Second})
	liveHook, _ := events.NewWebhook(events.WebhookOptions{URL: rc.URL, Secrets: []string{secret}})
	var mu sync.Mutex
	locks := map[string]*sync.Mutex{}
	lockFor := func(name string) sync.Locker {
		mu.Lock()
		defer mu.Unlock()
		if locks[name] == nil {
			locks[name] = &sync.Mutex{}
		}
		return locks[name]
	}
	d, _ := events.New(events.Options{Log: store, Sinks: []events.Sink{deadHook, liveHook}, Holder: "test", Poll: 20 * time.Millisecond, LockFor: lockFor})
	run(t, d)
	t.Cleanup(func() { close(release) }) // first: the stop need not wait out the hung delivery
	if _, err := svc.CreateUser(context.Background(), quota.NewUser{Name: "D", Email: "dead@example.com"}); err != nil {
		t.Fatal(err)
	}
	d.Kick()
	waitFor(t, "the live sink's delivery while the dead one hangs", func() bool { return len(rc.events()) == 1 })
}

// stoppingSink takes every event, and the first time it does, stops the
// dispatcher it serves before answering: a reload or a clean stop that
// comes the moment a delivery succeeded.
type stoppingSink struct {
	mu   sync.Mutex
	got  []string
	stop func()
}

func (s *stoppingSink) Name() string        { return "stopping" }
func (s *stoppingSink) Accepts(string) bool { return true }
func (s *stoppingSink) Deliver(_ context.Context, ev quota.CloudEvent, _ []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.got = append(s.got, ev.ID)
	if s.stop != nil {
		s.stop()
		s.stop = nil
	}
	return nil
}

func (s *stoppingSink) ids() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

// TestStopRightAfterADeliveryMovesTheCursor: an event delivered just as the
// dispatcher stops is not delivered again by the next one (the cursor
// moves even though the dispatcher's context has ended).
func TestStopRightAfterADeliveryMovesTheCursor(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) {
			t.Parallel()
			store, svc, _ := kind.open(t)
			testStopRightAfterADelivery(t, store, svc)
		})
	}
}

func testStopRightAfterADelivery(t *testing.T, store quota.EventLog, svc *quota.Service) {
	sink := &stoppingSink{}
	start := func() (*events.Dispatcher, context.CancelFunc, chan struct{}) {
		d, err := events.New(events.Options{Log: store, Sinks: []events.Sink{sink}, Holder: "test", Poll: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); d.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		select { // the sink's cursor is placed: the events from here on are its
		case <-d.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("the dispatcher's sink not ready within 10s")
		}
		return d, cancel, done
	}
	_, cancel, done := start()
	sink.mu.Lock()
	sink.stop = cancel
	sink.mu.Unlock()
	if _, err := svc.CreateUser(context.Background(), quota.NewUser{Name: "S", Email: "s@example.com"}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the dispatcher did not stop")
	}
	first := sink.ids()
	if len(first) != 1 {
		t.Fatalf("delivered before the stop: %v", first)
	}
	start()
	if _, err := svc.CreateUser(context.Background(), quota.NewUser{Name: "T", Email: "t@example.com"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the second event", func() bool { return len(sink.ids()) >= 2 })
	time.Sleep(100 * time.Millisecond) // a repeat of the first would come first
	if got := sink.ids(); len(got) != 2 || got[0] != first[0] || got[1] == first[0] {
		t.Fatalf("deliveries %v: the event delivered as the dispatcher stopped came again", got)
	}
}
