package caddymodule

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// responsePrefix starts the placeholders of what a response names:
// {http.quota.response.header.<Name>} and {http.quota.response.body.<field>}.
const responsePrefix = "http.quota.response."

// Meter modes.
const (
	// MeterRequest charges Amount to every matching request at admission.
	MeterRequest = "request"
	// MeterCreate charges Amount at admission (refused over the limit) and
	// takes it back unless the backend answers 2xx: a created object.
	MeterCreate = "create"
	// MeterDelete releases Amount when the backend answers 2xx: a deleted
	// object.
	MeterDelete = "delete"
)

// Meter counts a resource for the requests its matchers select.
type Meter struct {
	// Resource is the counted resource name.
	Resource string `json:"resource"`
	// MatcherSetsRaw selects the requests; none means every request.
	MatcherSetsRaw caddyhttp.RawMatcherSets `json:"match,omitempty" caddy:"namespace=http.matchers"`
	// Mode is request (default), create or delete.
	Mode string `json:"mode,omitempty"`
	// Amount is how much one request counts (default 1).
	Amount int64 `json:"amount,omitempty"`
	// Key, a placeholder such as {http.request.header.X-Conversation-ID},
	// counts the resource once per distinct value: the fiftieth message of
	// a conversation is not a new conversation. A request whose key is
	// empty counts every time. {http.quota.body.<field>} is a top-level
	// field of a JSON request body. A create (+n) may take its key from
	// the response: {http.quota.response.header.<Name>} or
	// {http.quota.response.body.<field>} (a top-level field of a JSON
	// response); a delete (-n) with a key frees only a counted key.
	Key string `json:"key,omitempty"`

	matchers    caddyhttp.MatcherSets
	responseKey bool // Key names the response: {http.quota.response.*}
}

func (m *Meter) provision(ctx caddy.Context) error {
	if m.Mode == "" {
		m.Mode = MeterRequest
	}
	if m.Amount == 0 {
		m.Amount = 1
	}
	m.responseKey = strings.Contains(m.Key, "{"+responsePrefix)
	sets, err := ctx.LoadModule(m, "MatcherSetsRaw")
	if err != nil {
		return fmt.Errorf("meter %s: loading matchers: %w", m.Resource, err)
	}
	return m.matchers.FromInterface(sets)
}

func (m *Meter) validate() error {
	switch {
	case !quota.ValidResourceName(m.Resource):
		return fmt.Errorf("meter: resource %q must match %s", m.Resource, quota.ResourceNamePattern)
	case quota.InternalResource(m.Resource):
		return fmt.Errorf("meter: %q is one of the gateway's own counters (reserved_*, t.*)", m.Resource)
	case m.Mode != MeterRequest && m.Mode != MeterCreate && m.Mode != MeterDelete:
		return fmt.Errorf("meter %s: mode must be request, create or delete, got %q", m.Resource, m.Mode)
	case m.Amount < 1 || m.Amount > quota.MaxLimit:
		return fmt.Errorf("meter %s: amount must be between 1 and %d", m.Resource, int64(quota.MaxLimit))
	case strings.Contains(m.Key, "{"+responsePrefix) && m.Mode != MeterCreate:
		return fmt.Errorf("meter %s: a key from the response ({%s...}) counts created objects: use +n", m.Resource, responsePrefix)
	}
	return nil
}

// planMeters says what the meters count for one request, and which meters
// count objects created by a key the response names (in the order of
// MeterUses.Created).
func (h *Handler) planMeters(r *http.Request) (p quota.MeterUses, created []int, err error) {
	if len(h.Meters) == 0 {
		return p, nil, nil
	}
	repl, _ := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	for i := range h.Meters {
		m := &h.Meters[i]
		match, err := m.matchers.AnyMatchWithError(r)
		if err != nil {
			return p, nil, err
		}
		if !match {
			continue
		}
		if m.responseKey {
			// Counted by the key the response names, held until then.
			p.Created = append(p.Created, quota.Use{Resource: m.Resource, Amount: m.Amount})
			created = append(created, i)
			continue
		}
		key := ""
		if m.Key != "" && repl != nil {
			key = repl.ReplaceAll(m.Key, "")
			if len(key) > quota.MaxKeyLength {
				return p, nil, fmt.Errorf("meter %s: key longer than %d bytes", m.Resource, quota.MaxKeyLength)
			}
		}
		use := quota.Use{Resource: m.Resource, Amount: m.Amount, Key: key}
		undo := quota.Use{Resource: m.Resource, Amount: -m.Amount, Key: key}
		switch m.Mode {
		case MeterRequest:
			p.Admit = append(p.Admit, use)
		case MeterCreate:
			p.Admit = append(p.Admit, use)
			p.OnFailure = append(p.OnFailure, undo)
		case MeterDelete:
			p.OnSuccess = append(p.OnSuccess, undo)
		}
	}
	return p, created, nil
}

// parseMeter reads `meter <resource> [<matcher>] [<n> | +<n> | -<n>] [key
// <placeholder>]`; the dispenser is on "meter". matcher resolves a matcher
// token.
func parseMeter(d *caddyfile.Dispenser, matcher func() (caddy.ModuleMap, bool, error)) (Meter, error) {
	m := Meter{Mode: MeterRequest, Amount: 1}
	if !d.NextArg() {
		return m, d.Errf("meter needs a resource: meter <resource> [<matcher>] [<n> | +<n> | -<n>]")
	}
	m.Resource = d.Val()
	if !quota.ValidResourceName(m.Resource) {
		return m, d.Errf("meter: resource %q must match %s", m.Resource, quota.ResourceNamePattern)
	}
	set, isMatcher, err := matcher()
	if err != nil {
		return m, d.Errf("meter %s: %v", m.Resource, err)
	}
	var args []string
	if isMatcher {
		if set != nil {
			m.MatcherSetsRaw = caddyhttp.RawMatcherSets{set}
		}
	} else if d.Val() != m.Resource {
		// The token after the resource was not a matcher: an amount.
		args = append(args, d.Val())
	}
	args = append(args, d.RemainingArgs()...)
	if n := len(args); n >= 2 && args[n-2] == "key" {
		m.Key, args = args[n-1], args[:n-2]
	} else if n >= 1 && args[n-1] == "key" {
		return m, d.Errf("meter %s: key needs a placeholder, e.g. key {http.request.header.X-Conversation-ID}", m.Resource)
	}
	if len(args) > 1 {
		return m, d.Errf("meter %s: unexpected %q (syntax: meter <resource> [<matcher>] [<n> | +<n> | -<n>] [key <placeholder>])", m.Resource, args[1])
	}
	if len(args) == 1 {
		a := args[0]
		switch {
		case strings.HasPrefix(a, "+"):
			m.Mode, a = MeterCreate, a[1:]
		case strings.HasPrefix(a, "-"):
			m.Mode, a = MeterDelete, a[1:]
		}
		n, err := strconv.ParseInt(a, 10, 64)
		if err != nil || n < 1 || n > quota.MaxLimit {
			return m, d.Errf("meter %s: %q is not an amount (n, +n or -n with n from 1 to %d)", m.Resource, args[0], int64(quota.MaxLimit))
		}
		m.Amount = n
	}
	return m, nil
}
