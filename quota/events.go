package quota

import (
	"context"
	"encoding/json"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Event types.
const (
	EventUserCreated    = "user.created"
	EventUserUpdated    = "user.updated"
	EventUserDisabled   = "user.disabled"
	EventUserEnabled    = "user.enabled"
	EventUserDeleted    = "user.deleted"
	EventTokenCreated   = "token.created"
	EventTokenUpdated   = "token.updated"
	EventTokenRevoked   = "token.revoked"
	EventLimitsUpdated  = "limits.updated"
	EventUsageReset     = "usage.reset"
	EventCreditsAdded   = "credits.added"
	EventCreditsZeroed  = "credits.zeroed"
	EventUsageThreshold = "usage.threshold"
)

// EventTypes lists every event type, for validation of type filters.
var EventTypes = []string{
	EventUserCreated, EventUserUpdated, EventUserDisabled, EventUserEnabled, EventUserDeleted,
	EventTokenCreated, EventTokenUpdated, EventTokenRevoked, EventLimitsUpdated, EventUsageReset, EventCreditsAdded, EventCreditsZeroed,
	EventUsageThreshold, EventRolesGranted, EventRolesRevoked,
}

// Event is one change to an account, a token or a limit, or a tenant
// reaching a share of a limit. A store writes it in the same atomic step as
// the change it reports (its outbox), and the events package delivers it as
// a CloudEvent.
type Event struct {
	// ID is unique and sorts in time order (a UUIDv7, or one with a suffix).
	ID   string    `json:"id"`
	Type string    `json:"type"`
	Time time.Time `json:"time"`
	// Subject is the user the event is about.
	Subject string `json:"subject"`
	// Actor names the admin key that made the change ("" for the gateway
	// itself, as for thresholds).
	Actor string          `json:"actor,omitempty"`
	Data  json.RawMessage `json:"data"`
	// Pos is where the event sits in its outbox partition; it is not part
	// of the event.
	Pos string `json:"-"`
}

// ThresholdData is the data of a usage.threshold event.
type ThresholdData struct {
	Resource string `json:"resource"`
	Period   string `json:"period"`
	// WindowStart and WindowEnd are nil for a lifetime cap.
	WindowStart *time.Time `json:"windowStart"`
	WindowEnd   *time.Time `json:"windowEnd"`
	Percent     int64      `json:"percent"`
	Used        int64      `json:"used"`
	Limit       int64      `json:"limit"`
}

type actorKey struct{}

// WithActor returns ctx carrying the name of who makes the changes done
// with it (an admin key's name), for their events.
func WithActor(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, actorKey{}, name)
}

// ActorFrom returns the actor set by WithActor, or "".
func ActorFrom(ctx context.Context) string {
	name, _ := ctx.Value(actorKey{}).(string)
	return name
}

// newEvent builds an event about userID with data (marshalled; it cannot
// fail for the types used here).
func (s *Service) newEvent(ctx context.Context, typ, userID string, data any) Event {
	raw, err := json.Marshal(data)
	if err != nil {
		raw = json.RawMessage(`{}`)
	}
	return Event{ID: NewID(), Type: typ, Time: s.now(), Subject: userID, Actor: ActorFrom(ctx), Data: raw}
}

// EventQuery selects events from an outbox, oldest first.
type EventQuery struct {
	// After is the Cursor of a previous page ("" for the start of the
	// log): only events written after it. It is not an event id.
	After string
	// TypePrefix keeps events whose type starts with it ("user." or
	// "usage.threshold").
	TypePrefix string
	// UserID keeps one user's events.
	UserID string
	// Take is the page size (1 to MaxPageSize).
	Take int
}

// Match reports whether e passes the query's filters (not the cursor).
func (q EventQuery) Match(e Event) bool {
	return strings.HasPrefix(e.Type, q.TypePrefix) && (q.UserID == "" || e.Subject == q.UserID)
}

// EventPage is a page of the event log.
type EventPage struct {
	Events []Event
	// Cursor is where the page ends, on every page: the last one too,
	// and one with no events. A query After it lists only the events
	// written after the ones this page saw (matching its filters or not),
	// so a client at the end of the log polls with it to see each new
	// event once.
	Cursor string
	// More reports that more events match already: ask for the next page
	// now rather than poll later.
	More bool
}

// EventLog is a store's outbox as the events API and the delivery loop
// read it. An outbox has one or more partitions (Redis: one stream per
// hash slot in use); events of one user are in one partition, in order.
type EventLog interface {
	// ListEvents returns up to q.Take events matching q, oldest first (in
	// the order they were written), and the page's cursor (see EventPage:
	// an event written after a page was read is never listed before its
	// cursor). A cursor the store did not make is ErrInvalid.
	ListEvents(ctx context.Context, q EventQuery) (EventPage, error)
	// EventPartitions lists the outbox's partitions.
	EventPartitions(ctx context.Context) ([]string, error)
	// ReadEvents returns up to n events of partition after sink's cursor,
	// in order, with Pos set.
	ReadEvents(ctx context.Context, partition, sink string, n int) ([]Event, error)
	// AckEvent moves sink's cursor in partition to pos.
	AckEvent(ctx context.Context, partition, sink, pos string) error
	// StartSink readies sink's cursors before it delivers. A sink that has
	// cursors keeps them (it resumes where it was); a sink seen for the
	// first time starts after the events written so far, in every
	// partition, not at the start of the retained backlog: a webhook whose
	// URL changed is a new sink. former, if not "", names a sink whose
	// cursors a new sink takes over instead (the same destination under an
	// older name). It is idempotent.
	StartSink(ctx context.Context, sink, former string) error
	// LeadEvents takes or renews, for holder, the lease that makes it the
	// one node that delivers events; false if another node holds it.
	LeadEvents(ctx context.Context, holder string, ttl time.Duration) (bool, error)
	// TrimEvents drops events written before t.
	TrimEvents(ctx context.Context, before time.Time) error
}

// DefaultEventSource is the CloudEvents source of events when none is
// configured.
const DefaultEventSource = "caddy-tenant-quota"

// CloudEvent is an event in the CloudEvents 1.0 JSON format, with the
// "actor" extension attribute.
type CloudEvent struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Time            time.Time       `json:"time"`
	Subject         string          `json:"subject"`
	DataContentType string          `json:"datacontenttype"`
	Actor           string          `json:"actor,omitempty"`
	Data            json.RawMessage `json:"data"`
}

// CloudEvent returns e as a CloudEvent from source.
func (e Event) CloudEvent(source string) CloudEvent {
	if source == "" {
		source = DefaultEventSource
	}
	data := e.Data
	if len(data) == 0 {
		data = json.RawMessage(`{}`)
	}
	return CloudEvent{
		SpecVersion: "1.0", ID: e.ID, Source: source, Type: e.Type, Time: e.Time.UTC(),
		Subject: e.Subject, DataContentType: "application/json", Actor: e.Actor, Data: data,
	}
}

// ListEvents returns a page of the outbox, oldest first, with its cursor
// (see EventPage). typePrefix may end in ".*" or ".".
func (s *Service) ListEvents(ctx context.Context, q EventQuery) (EventPage, error) {
	if q.Take < 1 || q.Take > MaxPageSize {
		return EventPage{}, Invalid("take", "must be between 1 and %d", MaxPageSize)
	}
	q.TypePrefix = strings.TrimSuffix(q.TypePrefix, "*")
	if q.TypePrefix != "" && !knownTypePrefix(q.TypePrefix) {
		return EventPage{}, Invalid("type", "%q is no event type or prefix of one (%s)", q.TypePrefix, strings.Join(EventTypes, ", "))
	}
	if q.UserID != "" && !validID(q.UserID) {
		return EventPage{}, Invalid("userId", "is not a user id")
	}
	if len(q.After) > 512 {
		return EventPage{}, Invalid("after", "is not a cursor this API returned")
	}
	if looksLikeEventID(q.After) {
		// Event ids sort by the clock of the node that made them, not in
		// the order events were written, so one cannot say what came after.
		return EventPage{}, Invalid("after", "is an event id, not a cursor: pass the cursor of the page that listed the event")
	}
	return s.store.ListEvents(ctx, q)
}

// looksLikeEventID reports whether s is an event id (a UUID, maybe with a
// suffix), which no store's cursor is.
func looksLikeEventID(s string) bool {
	if len(s) < 36 {
		return false
	}
	_, err := uuid.Parse(s[:36])
	return err == nil
}

func knownTypePrefix(p string) bool {
	for _, t := range EventTypes {
		if strings.HasPrefix(t, p) {
			return true
		}
	}
	return false
}
