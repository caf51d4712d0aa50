package events_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/tenantquota/caddy-tenant-quota/internal/quotatest"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/events"
)

// TestKafkaDelivery: against franz-go's in-process Kafka-protocol cluster,
// with the real franz-go client on both ends, every event is produced once
// it is acknowledged, keyed by user id, in order per user, as the
// CloudEvents Kafka binding's structured mode has it: a content-type
// header of the JSON event format, and a value the CloudEvents SDK reads
// as a valid event.
func TestKafkaDelivery(t *testing.T) {
	t.Parallel()
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(3, "tenant-quota-events"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	store, svc := quotatest.Embedded(t)
	sink, err := events.NewKafka(events.KafkaOptions{Brokers: cluster.ListenAddrs(), Topic: "tenant-quota-events"})
	if err != nil {
		t.Fatal(err)
	}
	d, err := events.New(events.Options{Log: store, Sinks: []events.Sink{sink}, Holder: "test", Poll: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	run(t, d)

	want := map[string][]string{}
	for i := range 4 {
		u, err := svc.CreateUser(context.Background(), quota.NewUser{Name: "K", Email: fmt.Sprintf("k%d@example.com", i)})
		if err != nil {
			t.Fatal(err)
		}
		tok, err := svc.CreateToken(context.Background(), u.ID, quota.NewToken{})
		if err != nil {
			t.Fatal(err)
		}
		if err := svc.RevokeToken(context.Background(), u.ID, tok.ID); err != nil {
			t.Fatal(err)
		}
		want[u.ID] = []string{quota.EventUserCreated, quota.EventTokenCreated, quota.EventTokenRevoked}
	}
	d.Kick()

	consumer, err := kgo.NewClient(kgo.SeedBrokers(cluster.ListenAddrs()...), kgo.ConsumeTopics("tenant-quota-events"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	got := map[string][]string{}
	n := 0
	pctx, pcancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer pcancel()
	for n < 12 {
		fetches := consumer.PollFetches(pctx)
		if pctx.Err() != nil {
			t.Fatalf("consumed %d of 12 events", n)
		}
		fetches.EachRecord(func(r *kgo.Record) {
			var ct []string
			for _, h := range r.Headers {
				if h.Key == "content-type" {
					ct = append(ct, string(h.Value))
				}
			}
			if len(ct) != 1 || ct[0] != events.ContentType {
				t.Fatalf("record content-type headers %q, want one %q", ct, events.ContentType)
			}
			var sdk event.Event
			if err := json.Unmarshal(r.Value, &sdk); err != nil {
				t.Fatalf("the SDK reads no event from the record value: %v", err)
			}
			checkCloudEvent(t, &sdk, r.Value)
			var ce quota.CloudEvent
			if err := json.Unmarshal(r.Value, &ce); err != nil {
				t.Fatalf("record value: %v", err)
			}
			if string(r.Key) != ce.Subject {
				t.Fatalf("record key %q, subject %q", r.Key, ce.Subject)
			}
			got[ce.Subject] = append(got[ce.Subject], ce.Type)
			n++
		})
	}
	for u, types := range want {
		if fmt.Sprint(got[u]) != fmt.Sprint(types) {
			t.Fatalf("user %s: got %v, want %v", u, got[u], types)
		}
	}
}
