package admin

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"go.uber.org/zap"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// DefaultMaxBodyBytes is the request body cap when Options.MaxBodyBytes is
// not set.
const DefaultMaxBodyBytes = 64 << 10

// realm is announced in the WWW-Authenticate header of 401 responses.
const realm = "tenant_quota_admin"

// Options configure a Handler. Service and at least one key are required.
type Options struct {
	// Service is the quota service the API manages. The handler does not
	// own it and never closes it.
	Service *quota.Service
	// ServiceFunc, instead of Service, returns the service when a request
	// comes (it may not exist yet when the handler is built); nil means
	// it is not available yet (503).
	ServiceFunc func() *quota.Service
	// Keys are the accepted admin keys, presented as
	// "Authorization: Bearer <key>". Several keys allow rotation: add the
	// new key, move clients over, remove the old one. Each is named
	// "default" in events.
	Keys []string
	// NamedKeys are admin keys with a name, which the events of the
	// changes made with the key carry as their actor (never the key).
	NamedKeys []Key
	// EventSource is the CloudEvents source of the events GET /events
	// lists (quota.DefaultEventSource when empty).
	EventSource string
	// Roles are the roles that may be granted.
	Roles quota.Roles
	// ModelGroups are the names of the model groups, which limits may
	// name (tokens.<group>).
	ModelGroups []string
	// Logger defaults to a no-op logger.
	Logger *zap.Logger
	// MaxBodyBytes caps request bodies (default DefaultMaxBodyBytes).
	MaxBodyBytes int64
}

// Key is an admin key, its name and its permissions.
type Key struct {
	Name   string
	Secret string
	// Permissions are permission patterns (users.read, users.*, *); nil
	// grants every permission.
	Permissions []string
}

// DefaultKeyName names the admin keys given without a name.
const DefaultKeyName = "default"

// Handler serves the admin API. It is safe for concurrent use and immutable
// after New.
type Handler struct {
	svcFn   func() *quota.Service
	keys    [][sha256.Size]byte
	names   []string
	grants  [][]string        // per key: permission patterns, nil for all
	perms   map[string]string // route pattern -> required permission
	roles   quota.Roles
	groups  []string
	source  string
	log     *zap.Logger
	maxBody int64
	mux     *http.ServeMux
}

// New returns a Handler for opts. It fails if there is no service, no key,
// or a key that is empty, has white space around it or holds a line break
// (such a key could never be presented in a header).
func New(opts Options) (*Handler, error) {
	if opts.Service == nil && opts.ServiceFunc == nil {
		return nil, errors.New("admin: a quota service is required")
	}
	if opts.ServiceFunc == nil {
		svc := opts.Service
		opts.ServiceFunc = func() *quota.Service { return svc }
	}
	keys := make([]Key, 0, len(opts.Keys)+len(opts.NamedKeys))
	for _, k := range opts.Keys {
		keys = append(keys, Key{Name: DefaultKeyName, Secret: k})
	}
	keys = append(keys, opts.NamedKeys...)
	if len(keys) == 0 {
		return nil, errors.New("admin: at least one admin key is required")
	}
	h := &Handler{
		svcFn:   opts.ServiceFunc,
		source:  opts.EventSource,
		roles:   opts.Roles,
		groups:  opts.ModelGroups,
		log:     opts.Logger,
		maxBody: opts.MaxBodyBytes,
		mux:     http.NewServeMux(),
	}
	for i, key := range keys {
		// The key itself never appears in an error: it may end up in a log.
		k := key.Secret
		if strings.TrimSpace(k) == "" {
			return nil, fmt.Errorf("admin: admin key %d is empty", i)
		}
		if strings.TrimSpace(k) != k || strings.ContainsAny(k, "\r\n") {
			return nil, fmt.Errorf("admin: admin key %d has surrounding white space or a line break", i)
		}
		if err := ValidateKey(key.Name, key.Permissions); err != nil {
			return nil, fmt.Errorf("admin: admin key %d: %w", i, err)
		}
		h.keys = append(h.keys, sha256.Sum256([]byte(k)))
		h.names = append(h.names, key.Name)
		h.grants = append(h.grants, key.Permissions)
	}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	if h.maxBody <= 0 {
		h.maxBody = DefaultMaxBodyBytes
	}
	h.routes()
	return h, nil
}

// Routes lists every admin route with the permission it requires and its
// handler: the one table the mux, the permission check, the OpenAPI test
// and the permission test read.
var Routes = []Route{
	{"POST /users", quota.PermUsersCreate, (*Handler).createUser},
	{"GET /users", quota.PermUsersRead, (*Handler).listUsers},
	{"GET /users/{id}", quota.PermUsersRead, (*Handler).getUser},
	{"PATCH /users/{id}", quota.PermUsersUpdate, (*Handler).updateUser},
	{"DELETE /users/{id}", quota.PermUsersDelete, (*Handler).deleteUser},
	{"POST /users/{id}/tokens", quota.PermTokensCreate, (*Handler).createToken},
	{"GET /users/{id}/tokens", quota.PermTokensRead, (*Handler).listTokens},
	{"GET /users/{id}/tokens/{tokenId}", quota.PermTokensRead, (*Handler).getToken},
	{"PATCH /users/{id}/tokens/{tokenId}", quota.PermTokensUpdate, (*Handler).updateToken},
	{"DELETE /users/{id}/tokens/{tokenId}", quota.PermTokensRevoke, (*Handler).revokeToken},
	{"GET /users/{id}/limits", quota.PermLimitsRead, (*Handler).getLimits},
	{"PUT /users/{id}/limits", quota.PermLimitsWrite, (*Handler).putLimits},
	{"PATCH /users/{id}/limits", quota.PermLimitsWrite, (*Handler).patchLimits},
	{"GET /users/{id}/usage", quota.PermUsageRead, (*Handler).getUsage},
	{"POST /users/{id}/usage/reset", quota.PermUsageReset, (*Handler).resetUsage},
	{"POST /users/{id}/credits", quota.PermCreditsAdd, (*Handler).addCredits},
	{"GET /users/{id}/tokens/{tokenId}/usage", quota.PermUsageRead, (*Handler).tokenUsage},
	{"GET /users/{id}/roles", quota.PermRolesRead, (*Handler).listRoles},
	{"POST /users/{id}/roles", quota.PermRolesGrant, (*Handler).grantRole},
	{"DELETE /users/{id}/roles/{role}", quota.PermRolesRevoke, (*Handler).revokeRole},
	{"GET /events", quota.PermEventsRead, (*Handler).listEvents},
}

// Route is one admin route.
type Route struct {
	Pattern, Permission string
	serve               func(*Handler, http.ResponseWriter, *http.Request)
}

func (h *Handler) routes() {
	h.perms = map[string]string{}
	for _, r := range Routes {
		h.mux.HandleFunc(r.Pattern, func(w http.ResponseWriter, req *http.Request) { r.serve(h, w, req) })
		h.perms[r.Pattern] = r.Permission
	}
}

// ServeHTTP authenticates the request and routes it.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Responses may carry token secrets; no cache may keep any of them.
	w.Header().Set("Cache-Control", "no-store")
	if r.URL.Path == "/openapi.json" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		serveOpenAPI(w)
		return
	}
	which, ok, presented := h.authorized(r)
	if !ok {
		h.unauthorized(w, r, presented)
		return
	}
	// The changes made with this key name it in their events.
	r = r.WithContext(quota.WithActor(r.Context(), h.names[which]))
	if h.svcFn() == nil {
		h.writeError(w, r, &problemError{status: http.StatusServiceUnavailable, detail: "the quota store is not open yet; try again shortly"})
		return
	}
	fallback, pattern := h.mux.Handler(r)
	if pattern == "" {
		h.unrouted(w, r, fallback)
		return
	}
	if perm := h.perms[pattern]; h.grants[which] != nil && !quota.AnyPermits(h.grants[which], perm) {
		h.writeError(w, r, &problemError{
			status: http.StatusForbidden,
			detail: fmt.Sprintf("the admin key %q lacks the permission %s that %s needs", h.names[which], perm, pattern),
		})
		return
	}
	h.mux.ServeHTTP(w, r)
}

// authorized reports whether r carries one of the admin keys (and which),
// and whether it presented a bearer token at all. Keys are compared
// as SHA-256 digests in constant time, against every key, so neither the
// length of a key nor which key matched shows in the timing.
func (h *Handler) authorized(r *http.Request) (which int, ok, presented bool) {
	scheme, token, found := strings.Cut(r.Header.Get("Authorization"), " ")
	token = strings.TrimSpace(token)
	if !found || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return 0, false, false
	}
	digest := sha256.Sum256([]byte(token))
	match, which := 0, 0
	for i := range h.keys {
		eq := subtle.ConstantTimeCompare(digest[:], h.keys[i][:])
		which = subtle.ConstantTimeSelect(eq, i, which)
		match |= eq
	}
	if match != 1 {
		return 0, false, true
	}
	return which, true, true
}

func (h *Handler) unauthorized(w http.ResponseWriter, r *http.Request, presented bool) {
	challenge := `Bearer realm="` + realm + `"`
	detail := "send an admin key as Authorization: Bearer <key>"
	if presented {
		challenge += `, error="invalid_token"`
		detail = "the bearer token is not a valid admin key"
		h.log.Debug("admin request with an invalid key", zap.String("remote_addr", r.RemoteAddr), zap.String("method", r.Method))
	}
	w.Header().Set("WWW-Authenticate", challenge)
	h.writeError(w, r, &problemError{status: http.StatusUnauthorized, detail: detail})
}

// unrouted answers a request that matched no route with a problem: 405 with
// the Allow header when the path exists under another method, else 404.
// fallback is the ServeMux's own answer, run only to learn which it is.
func (h *Handler) unrouted(w http.ResponseWriter, r *http.Request, fallback http.Handler) {
	probe := &probeWriter{header: http.Header{}}
	fallback.ServeHTTP(probe, r)
	if probe.status == http.StatusMethodNotAllowed {
		allow := probe.header.Get("Allow")
		w.Header().Set("Allow", allow)
		h.writeError(w, r, &problemError{
			status: http.StatusMethodNotAllowed,
			detail: fmt.Sprintf("method %s is not allowed on %s; allowed: %s", r.Method, r.URL.Path, allow),
		})
		return
	}
	h.writeError(w, r, &problemError{
		status: http.StatusNotFound,
		detail: fmt.Sprintf("no such endpoint: %s %s", r.Method, r.URL.Path),
	})
}

// service is the quota service (see Options.ServiceFunc).
func (h *Handler) service() *quota.Service { return h.svcFn() }

// probeWriter records the status and headers of a handler and drops its
// body.
type probeWriter struct {
	header http.Header
	status int
}

func (p *probeWriter) Header() http.Header { return p.header }

func (p *probeWriter) WriteHeader(status int) {
	if p.status == 0 {
		p.status = status
	}
}

func (p *probeWriter) Write(b []byte) (int, error) {
	p.WriteHeader(http.StatusOK)
	return len(b), nil
}

var _ http.Handler = (*Handler)(nil)
