package events

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// Kafka produces events to a topic with franz-go's idempotent producer
// (acks from all in-sync replicas), in the structured mode of the
// CloudEvents Kafka protocol binding: the value is the CloudEvent JSON,
// with a content-type header of ContentType. The record key is the user
// id (the event's subject), so a tenant's events keep their order in one
// partition. The ce_id and ce_type headers, which the binding allows in
// structured mode, let a consumer route without parsing the value.
type Kafka struct {
	name   string
	types  Types
	client *kgo.Client
}

// KafkaOptions configure NewKafka.
type KafkaOptions struct {
	// Name is the sink's cursor name (default "kafka:" + Topic).
	Name    string
	Brokers []string
	Topic   string
	Types   Types
	// TLS, if set, encrypts connections to the brokers.
	TLS *tls.Config
	// SASL is "", "plain", "scram-sha-256" or "scram-sha-512", with User
	// and Password.
	SASL, User, Password string
	// Timeout bounds one delivery (default 10s).
	Timeout time.Duration
}

// NewKafka returns a Kafka sink; it connects lazily.
func NewKafka(opts KafkaOptions) (*Kafka, error) {
	if len(opts.Brokers) == 0 || opts.Topic == "" {
		return nil, errors.New("kafka: brokers and a topic are required")
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	kopts := []kgo.Opt{
		kgo.SeedBrokers(opts.Brokers...),
		kgo.DefaultProduceTopic(opts.Topic),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerLinger(0),
		kgo.RecordDeliveryTimeout(timeout),
		kgo.ClientID("caddy-tenant-quota"),
	}
	if opts.TLS != nil {
		kopts = append(kopts, kgo.DialTLSConfig(opts.TLS))
	}
	var mech sasl.Mechanism
	switch opts.SASL {
	case "":
	case "plain":
		mech = plain.Auth{User: opts.User, Pass: opts.Password}.AsMechanism()
	case "scram-sha-256":
		mech = scram.Auth{User: opts.User, Pass: opts.Password}.AsSha256Mechanism()
	case "scram-sha-512":
		mech = scram.Auth{User: opts.User, Pass: opts.Password}.AsSha512Mechanism()
	default:
		return nil, fmt.Errorf("kafka: sasl must be plain, scram-sha-256 or scram-sha-512, got %q", opts.SASL)
	}
	if mech != nil {
		kopts = append(kopts, kgo.SASL(mech))
	}
	client, err := kgo.NewClient(kopts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	name := opts.Name
	if name == "" {
		name = "kafka:" + opts.Topic
	}
	return &Kafka{name: name, types: opts.Types, client: client}, nil
}

// Name implements Sink.
func (k *Kafka) Name() string { return k.name }

// Accepts implements Sink.
func (k *Kafka) Accepts(typ string) bool { return k.types.Match(typ) }

// Deliver implements Sink: it returns once the brokers acknowledged the
// record.
func (k *Kafka) Deliver(ctx context.Context, ev quota.CloudEvent, body []byte) error {
	rec := &kgo.Record{
		Key: []byte(ev.Subject), Value: body,
		Headers: []kgo.RecordHeader{
			{Key: "content-type", Value: []byte(ContentType)},
			{Key: "ce_id", Value: []byte(ev.ID)}, {Key: "ce_type", Value: []byte(ev.Type)},
		},
	}
	if err := k.client.ProduceSync(ctx, rec).FirstErr(); err != nil {
		return fmt.Errorf("kafka: %w", err)
	}
	return nil
}

// Close closes the producer.
func (k *Kafka) Close() error {
	k.client.Close()
	return nil
}
