package caddymodule

import (
	"errors"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/events"
)

// Request outcomes, the values of the outcome label.
const (
	outcomeAdmitted        = "admitted"
	outcomeLimited         = "limited"
	outcomePaymentRequired = "payment_required"
	outcomeUnauthenticated = "unauthenticated"
	outcomeForbidden       = "forbidden"
	outcomeBadRequest      = "bad_request"
	outcomeStoreDown       = "store_unavailable"
	outcomeAllowedOnError  = "allowed_on_store_error"
	outcomeClientGone      = "client_gone"
)

// statusClientClosedRequest is the status logged for a request whose
// client hung up before it was answered (nginx's 499, as Caddy's proxy
// logs it).
const statusClientClosedRequest = 499

// metrics are the plugin's Prometheus metrics in Caddy's registry, served
// by Caddy's admin /metrics. Labels are bounded: never a user id, token,
// email or path.
type metrics struct {
	requests      *prometheus.CounterVec
	limited       *prometheus.CounterVec
	storeDuration *prometheus.HistogramVec
	tokens        *prometheus.CounterVec
	credits       prometheus.Counter
	reservations  prometheus.Gauge
	eventsWritten *prometheus.CounterVec
	storeKind     string
	// admitted is requests' admitted child, resolved once: it counts
	// almost every request.
	admitted prometheus.Counter
}

const namespace = "caddy_tenant_quota"

func newMetrics(reg prometheus.Registerer, a *App) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: namespace + "_requests_total", Help: "Tenant requests by outcome.",
		}, []string{"outcome"}),
		limited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: namespace + "_limited_total", Help: "Requests refused over a limit, by resource and period.",
		}, []string{"resource", "period"}),
		storeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: namespace + "_store_duration_seconds", Help: "Duration of store calls by operation and store kind.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, 1},
		}, []string{"operation", "store"}),
		tokens: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: namespace + "_llm_tokens_total", Help: "LLM tokens metered, by direction.",
		}, []string{"direction"}),
		credits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: namespace + "_credits_spent_total", Help: "Prepaid credits spent.",
		}),
		reservations: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: namespace + "_reservations_outstanding", Help: "Requests in flight holding a reservation, on this node.",
		}),
		eventsWritten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: namespace + "_events_written_total", Help: "Events written to the outbox by this node's admin API, by type.",
		}, []string{"type"}),
		storeKind: "embedded",
	}
	if a.Redis != "" {
		m.storeKind = "redis"
	}
	// The store opens at Start: until then these read zero.
	stats := func() quota.Stats {
		if a.service == nil {
			return quota.Stats{}
		}
		return a.service.Stats()
	}
	collectors := []prometheus.Collector{
		m.requests, m.limited, m.storeDuration, m.tokens, m.credits, m.reservations, m.eventsWritten,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: namespace + "_breaker_open", Help: "1 while the store circuit breaker is open."},
			func() float64 { return boolFloat(stats().BreakerOpen) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: namespace + "_journal_depth", Help: "Settlements waiting for the store."},
			func() float64 { return float64(stats().JournalDepth) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: namespace + "_cache_hits_total", Help: "Hot cache hits."},
			func() float64 { return float64(stats().CacheHits) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: namespace + "_cache_misses_total", Help: "Hot cache misses."},
			func() float64 { return float64(stats().CacheMisses) }),
		&eventCollector{app: a},
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return nil, err
			}
		}
	}
	m.admitted = m.requests.WithLabelValues(outcomeAdmitted)
	return m, nil
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (m *metrics) outcome(o string) {
	switch {
	case m == nil:
	case o == outcomeAdmitted && m.admitted != nil:
		m.admitted.Inc()
	default:
		m.requests.WithLabelValues(o).Inc()
	}
}

func (m *metrics) limitedBy(st quota.LimitState) {
	if m == nil {
		return
	}
	if st.Resource == quota.ResourceCredits {
		m.outcome(outcomePaymentRequired)
	} else {
		m.outcome(outcomeLimited)
	}
	m.limited.WithLabelValues(st.Resource, st.Limit.Per.String()).Inc()
}

// observe records one store call (the quota service's OnStoreCall).
func (m *metrics) observe(op string, took time.Duration, _ error) {
	if m != nil {
		m.storeDuration.WithLabelValues(op, m.storeKind).Observe(took.Seconds())
	}
}

// settled records what a settlement charged.
func (m *metrics) settled(uses []quota.Use) {
	if m == nil {
		return
	}
	for _, u := range uses {
		switch u.Resource {
		case quota.ResourceInputTokens:
			m.tokens.WithLabelValues("input").Add(float64(max(u.Amount, 0)))
		case quota.ResourceOutputTokens:
			m.tokens.WithLabelValues("output").Add(float64(max(u.Amount, 0)))
		case quota.ResourceCredits:
			m.credits.Add(float64(max(u.Amount, 0)))
		}
	}
}

// eventCollector reports the current dispatcher's deliveries by sink kind.
type eventCollector struct{ app *App }

var (
	eventsSent    = prometheus.NewDesc(namespace+"_events_delivered_total", "Events delivered, by sink kind.", []string{"sink"}, nil)
	eventsRetried = prometheus.NewDesc(namespace+"_events_retried_total", "Failed event delivery attempts, by sink kind.", []string{"sink"}, nil)
	eventsGaveUp  = prometheus.NewDesc(namespace+"_events_given_up_total", "Events given up after their last attempt, by sink kind.", []string{"sink"}, nil)
)

// Describe implements prometheus.Collector.
func (c *eventCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- eventsSent
	ch <- eventsRetried
	ch <- eventsGaveUp
}

// Collect implements prometheus.Collector.
func (c *eventCollector) Collect(ch chan<- prometheus.Metric) {
	byKind := map[string]events.Stats{"webhook": {}, "kafka": {}}
	if sh := c.app.shared; sh != nil {
		if d := sh.dispatcher.Load(); d != nil {
			for name, st := range d.SinkStats() {
				kind, _, _ := strings.Cut(name, ":")
				t := byKind[kind]
				t.Sent, t.Retried, t.GaveUp = t.Sent+st.Sent, t.Retried+st.Retried, t.GaveUp+st.GaveUp
				byKind[kind] = t
			}
		}
	}
	for kind, st := range byKind {
		ch <- prometheus.MustNewConstMetric(eventsSent, prometheus.CounterValue, float64(st.Sent), kind)
		ch <- prometheus.MustNewConstMetric(eventsRetried, prometheus.CounterValue, float64(st.Retried), kind)
		ch <- prometheus.MustNewConstMetric(eventsGaveUp, prometheus.CounterValue, float64(st.GaveUp), kind)
	}
}
