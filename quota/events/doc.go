// Package events delivers the quota outbox to sinks, as CloudEvents in
// structured mode (ContentType): webhooks signed per the Standard Webhooks
// specification, and Kafka (franz-go) per the CloudEvents Kafka binding.
//
// A Dispatcher reads each sink's events from the store's outbox
// (quota.EventLog) with a cursor of its own, in the order they were
// written, and moves the cursor on only once the sink took an event:
// delivery is at least once, and in order per user. A sink new to the
// store (a webhook whose URL changed is one) starts from the events
// written after it started, not from the retained backlog; a known one
// resumes. Of the gateways that share a store, one at a time delivers
// (the store's lease), and only gateways with a sink compete for it. A
// failing
// event is retried with exponential backoff and jitter, up to a bounded
// number of attempts over a bounded time, then given up (logged at WARN;
// it stays readable through the events API). A dead sink holds back only
// its own deliveries.
//
// The package must not import Caddy.
package events
