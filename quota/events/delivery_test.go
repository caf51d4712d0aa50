package events_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tenantquota/caddy-tenant-quota/internal/quotatest"
	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/events"
)

// storeKinds are the stores a delivery test runs on: each returns an
// event log, a service over it and, on Redis, a client of the server.
var storeKinds = []struct {
	name string
	open func(t *testing.T) (quota.EventLog, *quota.Service, *redis.Client)
}{
	{"embedded", func(t *testing.T) (quota.EventLog, *quota.Service, *redis.Client) {
		store, svc := quotatest.Embedded(t)
		return store, svc, nil
	}},
	{"redis", func(t *testing.T) (quota.EventLog, *quota.Service, *redis.Client) {
		srv := redistest.Start(t)
		store, svc := quotatest.Redis(t, srv)
		return store, svc, srv.Client(t)
	}},
}

// createUsers creates n users and returns their ids.
func createUsers(t *testing.T, svc *quota.Service, tag string, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		u, err := svc.CreateUser(context.Background(), quota.NewUser{Name: "U", Email: fmt.Sprintf("%s%d@example.com", tag, i)})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, u.ID)
	}
	return ids
}

// subjects lists the users whose events rc took, sorted (an outbox keeps
// the order of one user's events only).
func subjects(rc *receiver) []string {
	var out []string
	for _, ce := range rc.events() {
		out = append(out, ce.Subject)
	}
	slices.Sort(out)
	return out
}

// sorted returns ids sorted.
func sorted(ids ...[]string) []string {
	out := slices.Concat(ids...)
	slices.Sort(out)
	return out
}

// startHook runs a dispatcher with one webhook at url on log until the
// returned stop is called (or the test ends).
func startHook(t *testing.T, log quota.EventLog, url string) (stop func()) {
	t.Helper()
	hook, err := events.NewWebhook(events.WebhookOptions{URL: url, Secrets: []string{secret}})
	if err != nil {
		t.Fatal(err)
	}
	// A stopped dispatcher's lease holds until it expires: short, so that
	// the next one takes over soon, but long enough that the delivery under
	// way at a stop gets its grace (a third of the lease: at 300ms, a busy
	// machine cut a delivery the receiver had taken, and it came twice).
	d, err := events.New(events.Options{Log: log, Sinks: []events.Sink{hook}, Holder: quota.NewID(), Poll: 20 * time.Millisecond,
		LeaseTTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return run(t, d)
}

// TestChangedWebhookStartsFromNewEvents: a webhook seen for the first
// time, or whose URL changed, gets the events written from then on, not
// the retained backlog; one restarted with the same URL resumes where it
// was. On Redis, no key or cursor holds the URL's secrets.
func TestChangedWebhookStartsFromNewEvents(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		for _, form := range []struct {
			name string
			url  func(rc *receiver) string
		}{
			{"plain URL", func(rc *receiver) string { return rc.URL + "/hook" }},
			{"URL with secrets", func(rc *receiver) string {
				return "http://hook-user:" + hookPassword + "@" + strings.TrimPrefix(rc.URL, "http://") + "/hook?token=" + hookToken
			}},
		} {
			t.Run(kind.name+"/"+form.name, func(t *testing.T) {
				log, svc, rdb := kind.open(t)
				rc1, rc2 := newReceiver(t), newReceiver(t)
				createUsers(t, svc, "backlog", 2)

				stop := startHook(t, log, form.url(rc1))
				first := createUsers(t, svc, "first", 2)
				waitFor(t, "the first URL's new events", func() bool { return len(rc1.events()) >= 2 })
				stop()
				if got, want := fmt.Sprint(subjects(rc1)), fmt.Sprint(sorted(first)); got != want {
					t.Fatalf("a new webhook got %v, want only the events written after it started %v", got, want)
				}

				// Written while no node delivers; the same URL resumes with them.
				resumed := createUsers(t, svc, "while-down", 2)
				stop = startHook(t, log, form.url(rc1))
				waitFor(t, "the same URL resuming", func() bool { return len(rc1.events()) >= 4 })
				stop()
				if got, want := fmt.Sprint(subjects(rc1)), fmt.Sprint(sorted(first, resumed)); got != want {
					t.Fatalf("the first URL got %v, want %v (no backlog, nothing twice)", got, want)
				}

				// The URL changes: from new events on.
				createUsers(t, svc, "before-change", 1)
				stop = startHook(t, log, form.url(rc2))
				after := createUsers(t, svc, "after-change", 2)
				waitFor(t, "the new URL's new events", func() bool { return len(rc2.events()) >= 2 })
				stop()
				if got, want := fmt.Sprint(subjects(rc2)), fmt.Sprint(sorted(after)); got != want {
					t.Fatalf("the changed URL got %v, want only the events after the change %v", got, want)
				}
				if n := len(rc1.events()); n != 4 {
					t.Fatalf("the old URL got %d events after it was changed", n-4)
				}
				if rdb != nil {
					assertNoSecretInRedis(t, rdb)
				}
			})
		}
	}
}

// assertNoSecretInRedis fails t if a key, a hash field or a string value
// holds the webhook URL's password or token.
func assertNoSecretInRedis(t *testing.T, rdb *redis.Client) {
	t.Helper()
	ctx := context.Background()
	keys, err := rdb.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		var texts []string
		switch typ := rdb.Type(ctx, k).Val(); typ {
		case "hash":
			m, err := rdb.HGetAll(ctx, k).Result()
			if err != nil {
				t.Fatal(err)
			}
			for f, v := range m {
				texts = append(texts, f, v)
			}
		case "string":
			texts = append(texts, rdb.Get(ctx, k).Val())
		}
		for _, s := range append(texts, k) {
			if strings.Contains(s, hookPassword) || strings.Contains(s, hookToken) {
				t.Fatalf("redis key %s holds the webhook URL's secrets: %q", k, s)
			}
		}
	}
}

// TestRenamedWebhookResumes: a webhook whose URL has secrets had the whole
// URL as its cursor name before; under its new name it takes over that
// cursor instead of starting from new events.
func TestRenamedWebhookResumes(t *testing.T) {
	t.Parallel()
	for _, kind := range storeKinds {
		t.Run(kind.name, func(t *testing.T) {
			log, svc, _ := kind.open(t)
			rc := newReceiver(t)
			url := "http://hook-user:" + hookPassword + "@" + strings.TrimPrefix(rc.URL, "http://") + "/hook?token=" + hookToken
			delivered := createUsers(t, svc, "delivered", 1)
			// The old version delivered the first user's event: its cursor
			// stands there.
			parts, err := log.EventPartitions(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range parts {
				evs, err := log.ReadEvents(context.Background(), p, "webhook:"+url, 100)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range evs {
					if e.Subject == delivered[0] {
						if err := log.AckEvent(context.Background(), p, "webhook:"+url, e.Pos); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			pending := createUsers(t, svc, "pending", 2)
			startHook(t, log, url)
			waitFor(t, "the pending events", func() bool { return len(rc.events()) >= 2 })
			if got, want := fmt.Sprint(subjects(rc)), fmt.Sprint(sorted(pending)); got != want {
				t.Fatalf("got %v, want the events the old cursor had not reached %v", got, want)
			}
		})
	}
}

// TestSinklessNodeNeverLeads: a node with no sink does not take the
// delivery lease (it would deliver nothing while holding it), yet still
// trims old events; the node with a webhook delivers.
func TestSinklessNodeNeverLeads(t *testing.T) {
	t.Parallel()
	srv := redistest.Start(t)
	storeA, svc := quotatest.Redis(t, srv)
	storeB, _ := quotatest.Redis(t, srv)
	old := createUsers(t, svc, "old", 1)
	time.Sleep(5 * time.Millisecond) // the event is older than A's retention

	a, err := events.New(events.Options{Log: storeA, Holder: "sinkless", Poll: 20 * time.Millisecond,
		LeaseTTL: time.Minute, Retention: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, a)
	waitFor(t, "the sink-less node trimming "+old[0]+"'s event", func() bool {
		page, err := storeA.ListEvents(context.Background(), quota.EventQuery{Take: 10})
		return err == nil && len(page.Events) == 0
	})

	rc := newReceiver(t)
	startHook(t, storeB, rc.URL)
	users := createUsers(t, svc, "new", 1)
	waitFor(t, "the webhook node's delivery", func() bool { return len(rc.events()) == 1 })
	if got := subjects(rc); got[0] != users[0] {
		t.Fatalf("delivered %v", got)
	}
}
