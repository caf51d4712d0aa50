package caddymodule

import (
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/llmusage"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler enforces tenant quotas in front of a backend: it authenticates
// the request's bearer token, admits the request against the tenant's
// limits (or rejects it with 401, 403 or 429 before it reaches the
// backend), removes the tenant's token and passes the request on with the
// tenant's identity in placeholders.
type Handler struct {
	// Tokens, when false, turns LLM token metering off: only messages are
	// counted. Default true.
	Tokens *bool `json:"tokens,omitempty"`
	// UsageHeader names a response header in which the backend may report
	// token usage ("123" or "input=10, output=20"); it is removed before
	// the response reaches the client. Default X-Usage-Tokens.
	UsageHeader string `json:"usage_header,omitempty"`
	// DefaultMaxTokens is the output reservation of a request that sets no
	// max_tokens / max_completion_tokens / max_output_tokens. Default 4096.
	DefaultMaxTokens int64 `json:"default_max_tokens,omitempty"`
	// IncludeUsage, when true (the default), adds
	// stream_options.include_usage to streamed chat completions that do
	// not ask for usage, so that streams are never free.
	IncludeUsage *bool `json:"include_usage,omitempty"`
	// MaxRequestBody caps how much of a request body is read to estimate
	// its tokens (default 4 MiB); larger bodies are forwarded untouched.
	MaxRequestBody int64 `json:"max_request_body,omitempty"`
	// Meters count further resources for the requests they select.
	Meters []Meter `json:"meters,omitempty"`
	// Credits price resources in prepaid credits; a request whose price is
	// more than the tenant has left is refused (402 insufficient_credits).
	Credits []quota.CreditRate `json:"credits,omitempty"`
	// ReservationTTL is how long a request's reservation is held if the
	// request never settles (its node crashed); then the store releases it.
	// Default 10m; it must outlast the longest request.
	ReservationTTL caddy.Duration `json:"reservation_ttl,omitempty"`
	// Reserve is strict (default: an upper bound of the request's tokens,
	// so that caps hold) or estimate (the prompt's bytes / 4).
	Reserve string `json:"reserve,omitempty"`
	// PartTokens bound the tokens of one image, audio or file content
	// part in a strict reservation (keys image, audio, file).
	PartTokens map[string]int64 `json:"part_tokens,omitempty"`
	// Requires are the permissions a request needs: its token's scopes
	// must allow each, and, with On, the tenant must hold a role granting
	// it on that resource (a template with placeholders).
	Requires []Requirement `json:"require,omitempty"`
	// TokenHeaders are the request headers the tenant's token may come
	// in, the first present wins: Authorization (as "Bearer <token>"),
	// x-api-key (Anthropic SDKs) and api-key (Azure-style clients) by
	// default. All of them are removed before the request is proxied.
	TokenHeaders []string `json:"token_headers,omitempty"`
	// MaxTokensField is the field a Chat Completions request that sets no
	// output maximum is given one under: max_tokens (default, which every
	// OpenAI-compatible server honours) or max_completion_tokens (which
	// OpenAI's reasoning models require).
	MaxTokensField string `json:"max_tokens_field,omitempty"`
	// AllowUnmetered names the unmetered endpoints (quota.UnmeteredEndpoints)
	// served under reserve strict; the others get 403
	// endpoint_not_metered, since the gateway cannot bound what they spend.
	AllowUnmetered []string `json:"allow_unmetered,omitempty"`
	// TokenRoutesRaw, if set, selects the requests whose tokens are
	// metered instead of the default (POST requests whose path ends in
	// /chat/completions, /completions, /responses, /messages or
	// /embeddings).
	TokenRoutesRaw caddyhttp.RawMatcherSets `json:"token_routes,omitempty" caddy:"namespace=http.matchers"`

	route         *quota.Route // prepared
	tokenMatchers caddyhttp.MatcherSets
	tokenHeaders  []tokenHeader
	// bodyFields are the JSON body fields meter keys refer to; the
	// response* fields are what keys taken from a response need.
	bodyFields       []string
	responseHeaders  []string
	responseFields   []string
	responseBodyKeys bool
	absurdLogged     *atomic.Bool // the absurd-usage warning is logged once
	headerWarned     *atomic.Bool // the warning of tokens in headers Caddy logs, once
	requiresOn       bool         // a require names a resource: ambiguous paths are refused
	app              *App
	logger           *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.tenant_quota",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision loads the tenant_quota app.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	h.absurdLogged = new(atomic.Bool)
	h.headerWarned = new(atomic.Bool)
	app, err := ctx.App("tenant_quota")
	if err != nil {
		return fmt.Errorf("loading the tenant_quota app: %w", err)
	}
	h.app = app.(*App)
	on := true
	if h.Tokens == nil {
		h.Tokens = &on
	}
	if h.IncludeUsage == nil {
		h.IncludeUsage = &on
	}
	if h.UsageHeader == "" {
		h.UsageHeader = DefaultUsageHeader
	}
	if h.DefaultMaxTokens == 0 {
		h.DefaultMaxTokens = DefaultMaxTokens
	}
	if h.MaxRequestBody == 0 {
		h.MaxRequestBody = DefaultMaxRequestBody
	}
	if h.ReservationTTL == 0 {
		h.ReservationTTL = caddy.Duration(DefaultReservationTTL)
	}
	if h.Reserve == "" {
		h.Reserve = string(quota.ReserveStrict)
	}
	if len(h.TokenHeaders) == 0 {
		h.TokenHeaders = DefaultTokenHeaders
	}
	h.tokenHeaders = tokenHeadersOf(h.TokenHeaders)
	for _, rq := range h.Requires {
		h.requiresOn = h.requiresOn || rq.On != ""
	}
	for i := range h.Meters {
		if err := h.Meters[i].provision(ctx); err != nil {
			return err
		}
		for _, m := range bodyPlaceholder.FindAllStringSubmatch(h.Meters[i].Key, -1) {
			h.bodyFields = append(h.bodyFields, m[1])
		}
		for _, m := range responsePlaceholder.FindAllStringSubmatch(h.Meters[i].Key, -1) {
			if m[1] == "header" {
				h.responseHeaders = append(h.responseHeaders, m[2])
			} else {
				h.responseFields = append(h.responseFields, m[2])
				h.responseBodyKeys = true
			}
		}
	}
	if len(h.TokenRoutesRaw) > 0 {
		sets, err := ctx.LoadModule(h, "TokenRoutesRaw")
		if err != nil {
			return fmt.Errorf("loading token route matchers: %w", err)
		}
		if err := h.tokenMatchers.FromInterface(sets); err != nil {
			return err
		}
	}
	h.route = quota.Route{
		Reserve: quota.ReservePolicy(h.Reserve), DefaultMaxTokens: h.DefaultMaxTokens,
		ImageTokens: h.PartTokens["image"], AudioTokens: h.PartTokens["audio"], FileTokens: h.PartTokens["file"],
		Credits: h.Credits, Hold: time.Duration(h.ReservationTTL), ChatOutputField: h.MaxTokensField,
		ModelGroups: h.app.ModelGroups, UnmatchedModels: h.app.UnmatchedModels,
	}.Prepared()
	return nil
}

// bodyPlaceholder finds {http.quota.body.<field>} in a meter key, and
// responsePlaceholder {http.quota.response.header.<Name>} and
// {http.quota.response.body.<field>}.
var (
	bodyPlaceholder     = regexp.MustCompile(`\{http\.quota\.body\.([A-Za-z0-9_]+)\}`)
	responsePlaceholder = regexp.MustCompile(`\{http\.quota\.response\.(header|body)\.([A-Za-z0-9_-]+)\}`)
)

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if h.DefaultMaxTokens < 0 || h.DefaultMaxTokens > quota.MaxLimit {
		return fmt.Errorf("default_max_tokens must be between 1 and %d", int64(quota.MaxLimit))
	}
	if h.MaxRequestBody < 0 {
		return errors.New("max_request_body must not be negative")
	}
	if h.ReservationTTL < 0 || time.Duration(h.ReservationTTL) > 24*time.Hour {
		return errors.New("reservation_ttl must be between 1s and 24h")
	}
	if p := quota.ReservePolicy(h.Reserve); p != "" && p != quota.ReserveStrict && p != quota.ReserveEstimate {
		return fmt.Errorf("reserve must be strict or estimate, got %q", h.Reserve)
	}
	if f := h.MaxTokensField; f != "" && f != llmusage.FieldMaxTokens && f != llmusage.FieldMaxCompletionTokens {
		return fmt.Errorf("max_tokens_field must be max_tokens or max_completion_tokens, got %q", f)
	}
	for _, rq := range h.Requires {
		if err := quota.ValidatePermission(rq.Permission, false); err != nil {
			return fmt.Errorf("require: %w", err)
		}
	}
	for _, n := range h.AllowUnmetered {
		if !slices.Contains(quota.UnmeteredEndpoints, n) {
			return fmt.Errorf("allow_unmetered: %q is not an unmetered endpoint (known: %s)", n, strings.Join(quota.UnmeteredEndpoints, ", "))
		}
	}
	for kind, n := range h.PartTokens {
		if kind != "image" && kind != "audio" && kind != "file" {
			return fmt.Errorf("part_tokens: kind must be image, audio or file, got %q", kind)
		}
		if n < 1 || n > quota.MaxLimit {
			return fmt.Errorf("part_tokens %s must be between 1 and %d", kind, int64(quota.MaxLimit))
		}
	}
	for i := range h.Meters {
		if err := h.Meters[i].validate(); err != nil {
			return err
		}
	}
	for _, c := range h.Credits {
		if !quota.ValidResourceName(c.Resource) || c.Resource == quota.ResourceCredits || quota.InternalResource(c.Resource) {
			return fmt.Errorf("credits: %q is not a resource to price", c.Resource)
		}
		if c.Credits < 1 || c.Credits > 1_000_000_000 || c.Per < 0 || c.Per > 1_000_000_000 {
			return fmt.Errorf("credits %s: the price must be 1 to 1e9 credits per 1 to 1e9 units", c.Resource)
		}
	}
	return nil
}

// Placeholders set for every admitted request.
const (
	PlaceholderUserID     = "http.quota.user.id"
	PlaceholderExternalID = "http.quota.user.external_id"
	PlaceholderEmail      = "http.quota.user.email"
	PlaceholderTokenID    = "http.quota.token.id"
)

// ServeHTTP implements caddyhttp.MiddlewareHandler: authenticate, plan,
// admit, proxy, and settle in a deferred call that also runs when the
// proxy aborts the handler (a client that hung up mid-stream).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) (err error) {
	if why := quota.AmbiguousPath(r.URL.EscapedPath(), r.URL.Path, h.requiresOn); why != "" {
		// Matchers and the backend could read it as different paths: a
		// require could check one chatbot and the backend serve another.
		h.app.metrics.outcome(outcomeBadRequest)
		return writeError(w, http.StatusBadRequest, "This path is ambiguous: "+why+"; send it without.", "invalid_request_error", "invalid_path")
	}
	now := h.app.Service().Now() // read once for the request
	p, answered, err := h.authenticate(w, r, now)
	if answered {
		return err
	}
	rp, answered, err := h.plan(w, r, p)
	if answered {
		return err
	}
	if rp.req != &nothingToRead {
		// A body was read, which may have taken a while: the admission
		// reads the clock again (a slice must not admit past its end).
		now = h.app.Service().Now()
	}
	ticket, answered, err := h.admit(w, r, p, rp.plan, now)
	if answered {
		return err
	}
	if err := h.forwardBody(r, rp.req, rp.plan); err != nil {
		ticket.Abandon()
		return writeRequestError(w, err)
	}
	h.setPlaceholders(r, p)
	for _, th := range h.tokenHeaders {
		delete(r.Header, th.key) // the tenant's token is for this gateway only
	}
	if !rp.plan.Settles() {
		err = next.ServeHTTP(w, r)
		rp.plan.Release() // nothing holds it or its ticket now (not on a panic: left to the GC)
		return err
	}
	if m := h.app.metrics; m != nil && ticket.Holds() { // known from the admission: no second look at the plan
		m.reservations.Inc()
		defer m.reservations.Dec()
	}
	mw := &meterWriter{ResponseWriterWrapper: &caddyhttp.ResponseWriterWrapper{ResponseWriter: w}, usageHeader: h.UsageHeader, keepBody: h.responseBodyKeys && len(rp.created) > 0}
	defer func() { h.settle(ticket, mw, r, rp.created, recover(), err) }()
	return next.ServeHTTP(mw, r)
}

// requestPlan is what the handler plans for an authorized request: its
// body as read, its plan, and the meters that count created objects.
type requestPlan struct {
	req     *request
	plan    *quota.Plan
	created []int
}

// plan checks what the request may do and plans what it costs, or answers
// 403 (a permission, an endpoint that cannot be metered, a model) or 400
// (answered is then true).
func (h *Handler) plan(w http.ResponseWriter, r *http.Request, p *quota.Principal) (rp requestPlan, answered bool, err error) {
	m := h.app.metrics
	if denied := h.authorize(r, p); denied != "" {
		m.outcome(outcomeForbidden)
		return rp, true, writeError(w, http.StatusForbidden, denied, "permission_error", "permission_denied")
	}
	if e := h.unmetered(r, nil); e != "" {
		m.outcome(outcomeForbidden)
		return rp, true, writeUnmetered(w, e)
	}
	if rp.req, err = h.readRequest(r); err != nil {
		m.outcome(outcomeBadRequest)
		return rp, true, writeRequestError(w, err)
	}
	if e := h.unmetered(r, rp.req); e != "" {
		m.outcome(outcomeForbidden)
		return rp, true, writeUnmetered(w, e)
	}
	meters, created, err := h.planMeters(r)
	if err != nil {
		m.outcome(outcomeBadRequest)
		return rp, true, writeRequestError(w, err)
	}
	rp.plan, rp.created = h.route.Plan(meters, rp.req.tokens), created
	if refusal := rp.plan.ModelRefusal(p.User); refusal != "" {
		m.outcome(outcomeForbidden)
		return rp, true, writeError(w, http.StatusForbidden, refusal, "permission_error", "model_not_allowed")
	}
	return rp, false, nil
}

// authenticate finds the request's tenant, or answers 401, 403 or 503
// (answered is then true).
func (h *Handler) authenticate(w http.ResponseWriter, r *http.Request, now time.Time) (p *quota.Principal, answered bool, err error) {
	m := h.app.metrics
	secret, ok := tokenFrom(r, h.tokenHeaders)
	if !ok {
		m.outcome(outcomeUnauthenticated)
		return nil, true, writeUnauthorized(w, missingToken(h.TokenHeaders))
	}
	h.warnLoggedHeader(r)
	p, err = h.app.Service().AuthenticateAt(r.Context(), secret, now)
	if err != nil {
		return nil, true, answerFailure(w, r, h.logger, m, err)
	}
	return p, false, nil
}

// admit admits the planned request, or answers 429, 402 or 503 (answered
// is then true). When the store does not answer, on_store_error decides.
func (h *Handler) admit(w http.ResponseWriter, r *http.Request, p *quota.Principal, plan *quota.Plan, now time.Time) (t *quota.Ticket, answered bool, err error) {
	m := h.app.metrics
	t, err = h.app.Service().AdmitPrincipal(r.Context(), p, plan, now)
	if err == nil {
		m.outcome(outcomeAdmitted)
	} else if t, answered, err = h.notAdmitted(w, r, p, t, err); answered {
		return nil, true, err
	}
	if t.Tightest != nil {
		setRateLimitHeaders(w.Header(), t.Tightest, t.Now)
	}
	return t, false, nil
}

// notAdmitted answers a refused admission (429, 402 or 503), or lets
// on_store_error allow admit it.
func (h *Handler) notAdmitted(w http.ResponseWriter, r *http.Request, p *quota.Principal, t *quota.Ticket, err error) (*quota.Ticket, bool, error) {
	if errors.Is(err, quota.ErrUnavailable) && r.Context().Err() == nil && h.app.admitOnStoreError(p.User.ID) {
		h.app.metrics.outcome(outcomeAllowedOnError)
		t.Force() // served: counted once when the store is back
		storeLog.write(h.logger, zapcore.WarnLevel, "quota store unavailable; admitted by on_store_error allow", zap.Error(err))
		return t, false, nil
	}
	if t != nil {
		t.Abandon() // refused: the admission, if it still lands, must not count
	}
	if errors.Is(err, quota.ErrUnauthenticated) {
		// The user was deleted on another node an instant ago.
		h.app.metrics.outcome(outcomeUnauthenticated)
		return nil, true, writeUnauthorized(w, "this token is no longer valid")
	}
	return nil, true, answerFailure(w, r, h.logger, h.app.metrics, err)
}

// unmetered returns the unmetered endpoint a request calls, when the route
// refuses it (reserve strict, tokens metered, not allowed by name): by its
// path before the body is read (req nil), by its body after. "" otherwise.
func (h *Handler) unmetered(r *http.Request, req *request) string {
	if !*h.Tokens || h.route.Reserve != quota.ReserveStrict {
		return ""
	}
	var e string
	switch {
	case req == nil:
		// An upgrade: HTTP/1.1 Upgrade, or an extended CONNECT (HTTP/2
		// and /3 WebSockets), which reverse_proxy turns into one.
		upgrade := r.Header.Get("Upgrade") != "" || r.Method == http.MethodConnect
		e = quota.UnmeteredEndpoint(r.Method, r.URL.Path, upgrade)
	case req.tokens.API == quota.APIResponses && req.tokens.Body.Background:
		e = quota.UnmeteredBackground
	case req.tokens.API != quota.APINone && req.tokens.Body.StoredState:
		e = quota.UnmeteredStoredState
	case req.tokens.API != quota.APINone && req.tokens.Body.ServerTools:
		e = quota.UnmeteredServerTools
	}
	if e == "" || slices.Contains(h.AllowUnmetered, e) {
		return ""
	}
	return e
}

// Requirement is a permission a request needs (require <permission> [on
// <resource>]).
type Requirement = quota.Requirement

// authorize checks the route's requirements (quota.Roles.Authorize), with
// their resources resolved by the request's placeholders.
func (h *Handler) authorize(r *http.Request, p *quota.Principal) string {
	if len(h.Requires) == 0 {
		return ""
	}
	var resolve func(string) string
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		resolve = func(s string) string { return repl.ReplaceAll(s, "") }
	}
	return quota.Roles(h.app.Roles).Authorize(p, h.Requires, resolve)
}

func (h *Handler) setPlaceholders(r *http.Request, p *quota.Principal) {
	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	// One provider rather than four map entries: this runs for every
	// admitted request.
	repl.Map(func(key string) (any, bool) {
		switch key {
		case PlaceholderUserID:
			return p.User.ID, true
		case PlaceholderExternalID:
			return p.User.ExternalID, true
		case PlaceholderEmail:
			return p.User.Email, true
		case PlaceholderTokenID:
			return p.Token.ID, true
		}
		return nil, false
	})
}

// DefaultTokenHeaders are where a tenant's token is looked for.
var DefaultTokenHeaders = []string{"Authorization", "X-Api-Key", "Api-Key"}

var defaultTokenHeaders = tokenHeadersOf(DefaultTokenHeaders)

// tokenHeader is a header a token may come in, by its canonical key (made
// once, not per request).
type tokenHeader struct {
	key    string
	bearer bool // Authorization: "Bearer <token>"
}

func tokenHeadersOf(names []string) []tokenHeader {
	out := make([]tokenHeader, len(names))
	for i, name := range names {
		out[i] = tokenHeader{key: textproto.CanonicalMIMEHeaderKey(name), bearer: strings.EqualFold(name, "Authorization")}
	}
	return out
}

// tokenFrom takes the tenant's token from the first of headers present:
// Authorization holds "Bearer <token>", the others the token alone.
func tokenFrom(r *http.Request, headers []tokenHeader) (string, bool) {
	for _, th := range headers {
		var v string
		if vs := r.Header[th.key]; len(vs) > 0 {
			v = vs[0]
		}
		if v == "" {
			continue
		}
		if th.bearer {
			return bearerToken(v)
		}
		v = strings.TrimSpace(v)
		return v, v != ""
	}
	return "", false
}

// warnLoggedHeader warns, once per handler (a config load), that a token
// came in a header Caddy's access and error logs do not redact: they
// record the request as it arrived, before any handler, and redact only
// Authorization and cookies, and no plugin can change that. Any token
// header but Authorization counts, whichever the token was taken from.
// The warning names the header and the filter; an operator whose log
// encoders filter it can ignore it. Once it is logged, it costs one
// atomic load.
func (h *Handler) warnLoggedHeader(r *http.Request) {
	if h.headerWarned == nil || h.headerWarned.Load() {
		return
	}
	for _, th := range h.tokenHeaders {
		if th.bearer || th.key == "Proxy-Authorization" || len(r.Header[th.key]) == 0 || !h.headerWarned.CompareAndSwap(false, true) {
			continue
		}
		h.logger.Warn("a tenant token came in a header that Caddy's access and error logs write in clear (they redact only Authorization): "+
			"unless the site's log and the default log filter it, tokens sent this way are in the logs; see the README, Security",
			zap.String("header", th.key),
			zap.String("filter", "log { format filter { request>headers>"+th.key+" delete } }, and the same in the global log default { ... }"))
		return
	}
}

func bearerToken(header string) (string, bool) {
	scheme, token, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// Interface guards.
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
