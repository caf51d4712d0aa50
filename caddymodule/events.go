package caddymodule

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/events"
)

// EventsConfig configures event delivery (the events block of the global
// option).
type EventsConfig struct {
	// Webhooks receive events signed per Standard Webhooks.
	Webhooks []WebhookConfig `json:"webhooks,omitempty"`
	// Kafka producers receive events keyed by user id.
	Kafka []KafkaConfig `json:"kafka,omitempty"`
	// Thresholds are the percentages of a limit at which usage.threshold
	// fires, once per limit and window (default 80 and 100).
	Thresholds []int64 `json:"thresholds,omitempty"`
	// Retention is how long events are kept (default 7d).
	Retention caddy.Duration `json:"retention,omitempty"`
	// Source is the CloudEvents source (default caddy-tenant-quota).
	Source string `json:"source,omitempty"`
}

// WebhookConfig is one webhook endpoint.
type WebhookConfig struct {
	URL string `json:"url"`
	// Secrets are whsec_ secrets (placeholders allowed); all of them sign.
	Secrets []string `json:"secrets"`
	// Types select event types (user.*, usage.threshold); none: all.
	Types []string `json:"types,omitempty"`
	// Timeout bounds one attempt (default 10s).
	Timeout caddy.Duration `json:"timeout,omitempty"`
}

// DefaultThresholds are the percentages usage.threshold fires at.
var DefaultThresholds = []int64{80, 100}

// DefaultEventRetention is how long events are kept by default.
const DefaultEventRetention = 7 * 24 * time.Hour

func (c *EventsConfig) validate() error {
	for _, p := range c.Thresholds {
		if p < 1 || p > 1000 {
			return fmt.Errorf("events: thresholds are percentages from 1 to 1000, got %d", p)
		}
	}
	if c.Retention < 0 {
		return errors.New("events: retention must not be negative")
	}
	for _, w := range c.Webhooks {
		if err := events.Types(w.Types).Validate(); err != nil {
			return fmt.Errorf("events: webhook %s: %w", events.RedactURL(w.URL), err)
		}
		if len(w.Secrets) == 0 {
			return fmt.Errorf("events: webhook %s needs a secret (whsec_ and base64)", events.RedactURL(w.URL))
		}
	}
	for _, k := range c.Kafka {
		if err := events.Types(k.Types).Validate(); err != nil {
			return fmt.Errorf("events: kafka: %w", err)
		}
		if len(k.Brokers) == 0 || k.Topic == "" {
			return errors.New("events: kafka needs brokers and a topic")
		}
	}
	return nil
}

// sinks builds the configured sinks, with placeholders replaced.
func (c *EventsConfig) sinks(repl *caddy.Replacer) ([]events.Sink, error) {
	var out []events.Sink
	for _, w := range c.Webhooks {
		var secrets []string
		for i, s := range w.Secrets {
			v := repl.ReplaceKnown(s, "")
			if v == "" {
				return nil, fmt.Errorf("events: webhook %s: secret #%d is empty after replacing placeholders (is its environment variable set?)", events.RedactURL(w.URL), i+1)
			}
			secrets = append(secrets, v)
		}
		hook, err := events.NewWebhook(events.WebhookOptions{
			URL: repl.ReplaceKnown(w.URL, ""), Secrets: secrets, Types: w.Types, Timeout: time.Duration(w.Timeout),
		})
		if err != nil {
			return nil, fmt.Errorf("events: %w", err)
		}
		out = append(out, hook)
	}
	for _, k := range c.Kafka {
		sink, err := k.sink(repl)
		if err != nil {
			return nil, err
		}
		out = append(out, sink)
	}
	return out, nil
}

// checkSecrets makes sure, at provisioning (so that caddy validate says
// so), that every webhook secret is set and well-formed.
func (c *EventsConfig) checkSecrets(repl *caddy.Replacer) error {
	for _, w := range c.Webhooks {
		for i, s := range w.Secrets {
			v := repl.ReplaceKnown(s, "")
			if v == "" {
				return fmt.Errorf("events: webhook %s: secret #%d is empty after replacing placeholders (is its environment variable set?)", events.RedactURL(w.URL), i+1)
			}
			if _, err := events.ParseSecret(v); err != nil {
				return fmt.Errorf("events: webhook %s: secret #%d: %w", events.RedactURL(w.URL), i+1, err)
			}
		}
	}
	return nil
}

// startEvents starts delivering events to the configured sinks, and
// trimming them after the retention (with no sink too: such a node takes
// no delivery lease, and trims on its own).
func (a *App) startEvents() error {
	var sinks []events.Sink
	if a.Events != nil {
		var err error
		if sinks, err = a.Events.sinks(caddy.NewReplacer()); err != nil {
			return err
		}
	}
	host, _ := os.Hostname()
	d, err := events.New(events.Options{
		Log: a.shared.store, Sinks: sinks, Source: a.eventSource(), Logger: a.logger.Named("events"),
		Holder:    fmt.Sprintf("%s/%d/%s", host, os.Getpid(), quota.NewID()),
		Retention: a.eventRetention(), LockFor: a.shared.deliveryLock,
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	// A sink new to the store (a changed URL) gets the events written once
	// it is started: wait a moment for that, so that the changes made
	// under this config reach it; a store that does not answer holds the
	// config back no longer (the dispatcher keeps trying).
	select {
	case <-d.Ready():
	case <-time.After(sinkStartWait):
		a.logger.Warn("event sinks not started yet; events written until they are will not reach a new sink")
	}
	a.shared.dispatcher.Store(d)
	a.stopEvents = func() {
		a.shared.dispatcher.CompareAndSwap(d, nil)
		cancel()
		<-done
	}
	return nil
}

// sinkStartWait bounds how long Start waits for the event sinks to start.
const sinkStartWait = 2 * time.Second

func (a *App) eventRetention() time.Duration {
	if a.Events == nil || a.Events.Retention == 0 {
		return DefaultEventRetention
	}
	return time.Duration(a.Events.Retention)
}

func (a *App) thresholds() []int64 {
	if a.Events == nil || len(a.Events.Thresholds) == 0 {
		return DefaultThresholds
	}
	return a.Events.Thresholds
}

// unmarshalEvents reads the events block:
//
//	events {
//		webhook <url> {
//			secret <whsec_...> [<whsec_...>]
//			types  <type|prefix.*>...
//			timeout <duration>
//		}
//		kafka <broker>[,<broker>...] {
//			topic <topic>
//			types <type|prefix.*>...
//			tls
//			sasl plain|scram-sha-256|scram-sha-512 <user> <password>
//		}
//		thresholds <percent>...
//		retention  <duration>
//		source     <uri>
//	}
func (c *EventsConfig) unmarshal(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch opt := d.Val(); opt {
		case "webhook":
			if !d.NextArg() {
				return d.Errf("webhook needs a URL")
			}
			w := WebhookConfig{URL: d.Val()}
			if d.NextArg() {
				return d.ArgErr()
			}
			for n := d.Nesting(); d.NextBlock(n); {
				switch d.Val() {
				case "secret":
					w.Secrets = append(w.Secrets, d.RemainingArgs()...)
				case "types":
					w.Types = append(w.Types, d.RemainingArgs()...)
				case "timeout":
					dur, err := parseDurationArg(d)
					if err != nil {
						return err
					}
					w.Timeout = dur
				default:
					return d.Errf("unrecognized webhook option %q (known: secret, types, timeout)", d.Val())
				}
			}
			if len(w.Secrets) == 0 {
				return d.Errf("webhook %s needs a secret: secret {env.TQ_WEBHOOK_SECRET}", events.RedactURL(w.URL))
			}
			c.Webhooks = append(c.Webhooks, w)
		case "kafka":
			k, err := parseKafka(d)
			if err != nil {
				return err
			}
			c.Kafka = append(c.Kafka, k)
		case "thresholds":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("thresholds needs percentages, e.g. thresholds 80 100")
			}
			for _, a := range args {
				n, err := strconv.ParseInt(strings.TrimSuffix(a, "%"), 10, 64)
				if err != nil || n < 1 || n > 1000 {
					return d.Errf("thresholds: %q is not a percentage from 1 to 1000", a)
				}
				c.Thresholds = append(c.Thresholds, n)
			}
		case "retention":
			dur, err := parseDurationArg(d)
			if err != nil {
				return err
			}
			c.Retention = dur
		case "source":
			if !d.NextArg() {
				return d.ArgErr()
			}
			c.Source = d.Val()
		default:
			return d.Errf("unrecognized events option %q (known: webhook, kafka, thresholds, retention, source)", opt)
		}
	}
	return nil
}

// eventsLogger logs a committed event and wakes the dispatcher.
func (s *sharedStore) onEvent(logger *zap.Logger) func(quota.Event) {
	return func(e quota.Event) {
		logger.Info("quota event", zap.String("type", e.Type), zap.String("event_id", e.ID),
			zap.String("user_id", e.Subject), zap.String("actor", e.Actor))
		if m := s.metrics.Load(); m != nil {
			m.eventsWritten.WithLabelValues(e.Type).Inc()
		}
		if d := s.dispatcher.Load(); d != nil {
			d.Kick()
		}
	}
}

// KafkaConfig is one Kafka producer.
type KafkaConfig struct {
	Brokers []string `json:"brokers"`
	Topic   string   `json:"topic"`
	Types   []string `json:"types,omitempty"`
	// TLS encrypts connections to the brokers (system roots).
	TLS bool `json:"tls,omitempty"`
	// SASL is plain, scram-sha-256 or scram-sha-512, with User and
	// Password (placeholders allowed).
	SASL     string `json:"sasl,omitempty"`
	User     string `json:"user,omitempty"`
	Password string `json:"password,omitempty"`
}

func (k KafkaConfig) sink(repl *caddy.Replacer) (events.Sink, error) {
	var brokers []string
	for _, b := range k.Brokers {
		brokers = append(brokers, repl.ReplaceKnown(b, ""))
	}
	opts := events.KafkaOptions{
		Brokers: brokers, Topic: repl.ReplaceKnown(k.Topic, ""), Types: k.Types,
		SASL: k.SASL, User: repl.ReplaceKnown(k.User, ""), Password: repl.ReplaceKnown(k.Password, ""),
	}
	if k.TLS {
		opts.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return events.NewKafka(opts)
}

func parseKafka(d *caddyfile.Dispenser) (KafkaConfig, error) {
	var k KafkaConfig
	args := d.RemainingArgs()
	if len(args) == 0 {
		return k, d.Errf("kafka needs brokers: kafka broker1:9092,broker2:9092 { topic <topic> }")
	}
	for _, a := range args {
		for _, b := range strings.Split(a, ",") {
			if b = strings.TrimSpace(b); b != "" {
				k.Brokers = append(k.Brokers, b)
			}
		}
	}
	for n := d.Nesting(); d.NextBlock(n); {
		switch opt := d.Val(); opt {
		case "topic":
			if !d.NextArg() {
				return k, d.ArgErr()
			}
			k.Topic = d.Val()
		case "types":
			k.Types = append(k.Types, d.RemainingArgs()...)
		case "tls":
			k.TLS = true
		case "sasl":
			args := d.RemainingArgs()
			if len(args) != 3 {
				return k, d.Errf("sasl takes <plain|scram-sha-256|scram-sha-512> <user> <password>")
			}
			switch args[0] {
			case "plain", "scram-sha-256", "scram-sha-512":
			default:
				return k, d.Errf("sasl mechanism must be plain, scram-sha-256 or scram-sha-512, got %q", args[0])
			}
			k.SASL, k.User, k.Password = args[0], args[1], args[2]
		default:
			return k, d.Errf("unrecognized kafka option %q (known: topic, types, tls, sasl)", opt)
		}
	}
	if k.Topic == "" {
		return k, d.Errf("kafka needs a topic: topic tenant-quota-events")
	}
	return k, nil
}

func (a *App) eventSource() string {
	if a.Events == nil {
		return ""
	}
	return a.Events.Source
}

// deliveryLock is the per-sink lock that keeps the dispatchers of two
// configs (a reload) from delivering to one sink at once.
func (s *sharedStore) deliveryLock(sink string) sync.Locker {
	s.deliverMu.Lock()
	defer s.deliverMu.Unlock()
	if s.sinkLocks == nil {
		s.sinkLocks = map[string]*sync.Mutex{}
	}
	l := s.sinkLocks[sink]
	if l == nil {
		l = &sync.Mutex{}
		s.sinkLocks[sink] = l
	}
	return l
}
