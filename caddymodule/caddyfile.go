package caddymodule

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("tenant_quota", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("tenant_quota", parseHandler)
	httpcaddyfile.RegisterHandlerDirective("tenant_quota_admin", parseAdminHandler)
	// Enforcement runs with the other authentication directives, before
	// anything that responds or proxies; the admin API responds itself.
	httpcaddyfile.RegisterDirectiveOrder("tenant_quota", httpcaddyfile.After, "forward_auth")
	httpcaddyfile.RegisterDirectiveOrder("tenant_quota_admin", httpcaddyfile.Before, "respond")
}

// parseGlobalOption sets up the tenant_quota app from the global option:
//
//	tenant_quota {
//		redis         <url | host:port[,host:port...]>  # omit: embedded store
//		db_path       <file>                            # embedded store file
//		admin_key     <key> [<key>...]                  # repeatable, for rotation
//		admin_key     <key> { name <name>; permissions <perm>... } # a named, restricted key
//		role          <name> <permission>...            # repeatable
//		model_group   <name> <model pattern>...         # repeatable, first match wins
//		unmatched_models allow | refuse                 # a model in no group
//		events { ... }                                  # see EventsConfig.unmarshal
//		cache_ttl     <duration>                        # default 30s
//		store_timeout <duration>                        # default 50ms
//		on_store_error deny | allow [<n> per minute|hour|day]
//	}
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	app := new(App)
	if existing != nil {
		return nil, d.Err("tenant_quota global option may be given only once")
	}
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	raw, err := json.Marshal(app)
	if err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "tenant_quota", Value: raw}, nil
}

// UnmarshalCaddyfile reads the tenant_quota global option; see
// parseGlobalOption for the syntax.
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch opt := d.Val(); opt {
		case "redis":
			if !d.NextArg() {
				return d.Errf("redis needs a URL (redis://host:6379/0) or host:port addresses")
			}
			a.Redis = d.Val()
			for d.NextArg() {
				a.Redis += "," + d.Val()
			}
		case "db_path":
			if !d.NextArg() {
				return d.ArgErr()
			}
			a.DBPath = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "admin_key":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.Errf("admin_key needs at least one key, e.g. admin_key {env.TQ_ADMIN_KEY}")
			}
			named := NamedAdminKey{}
			for n := d.Nesting(); d.NextBlock(n); {
				switch d.Val() {
				case "name":
					if !d.NextArg() {
						return d.ArgErr()
					}
					named.Name = d.Val()
					if d.NextArg() {
						return d.ArgErr()
					}
				case "permissions":
					perms := d.RemainingArgs()
					if len(perms) == 0 {
						return d.Errf("permissions needs at least one, e.g. permissions users.read usage.read")
					}
					named.Permissions = append(named.Permissions, perms...)
				default:
					return d.Errf("unrecognized admin_key option %q (known: name, permissions)", d.Val())
				}
			}
			if named.Name == "" && named.Permissions == nil {
				a.AdminKeys = append(a.AdminKeys, args...)
				continue
			}
			if named.Name == "" {
				return d.Errf("an admin_key with permissions needs a name: name <name>")
			}
			if len(args) != 1 {
				return d.Errf("a named admin_key block takes one key")
			}
			named.Key = args[0]
			a.NamedAdminKeys = append(a.NamedAdminKeys, named)
		case "role":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.Errf("role takes a name and its permissions: role ChatbotEditor chatbots.read chatbots.update")
			}
			if err := quota.ValidateRoleName(args[0]); err != nil {
				return d.Errf("%v", err)
			}
			for _, p := range args[1:] {
				if err := quota.ValidatePermission(p, true); err != nil {
					return d.Errf("role %s: %v", args[0], err)
				}
			}
			if a.Roles == nil {
				a.Roles = map[string][]string{}
			}
			if _, dup := a.Roles[args[0]]; dup {
				return d.Errf("role %s is defined twice", args[0])
			}
			a.Roles[args[0]] = args[1:]
		case "model_group":
			args := d.RemainingArgs()
			if len(args) < 2 {
				return d.Errf("model_group takes a name and model patterns: model_group premium gpt-4o o1* claude-opus-*")
			}
			a.ModelGroups = append(a.ModelGroups, quota.ModelGroup{Name: args[0], Patterns: args[1:]})
			if err := quota.ValidateModelGroups(a.ModelGroups); err != nil {
				return d.Errf("%v", err)
			}
		case "unmatched_models":
			if !d.NextArg() || (d.Val() != "allow" && d.Val() != "refuse") {
				return d.Errf("unmatched_models takes allow or refuse")
			}
			a.UnmatchedModels = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "events":
			if a.Events != nil {
				return d.Err("events may be given only once")
			}
			a.Events = &EventsConfig{}
			if err := a.Events.unmarshal(d); err != nil {
				return err
			}
		case "on_store_error":
			if err := a.parseOnStoreError(d); err != nil {
				return err
			}
		case "slices":
			if !d.NextArg() || (d.Val() != "on" && d.Val() != "off") || d.NextArg() {
				return d.Err("slices takes on or off")
			}
			on := d.Val() == "on"
			a.Slices = &on
		case "cache_ttl", "store_timeout":
			dur, err := parseDurationArg(d)
			if err != nil {
				return err
			}
			if opt == "cache_ttl" {
				a.CacheTTL = dur
			} else {
				a.StoreTimeout = dur
			}
		default:
			return d.Errf("unrecognized tenant_quota option %q (known: redis, db_path, admin_key, role, model_group, unmatched_models, events, cache_ttl, store_timeout, on_store_error)", opt)
		}
	}
	return nil
}

// parseOnStoreError reads `on_store_error deny`, `on_store_error allow` or
// `on_store_error allow <n> per <period>`.
func (a *App) parseOnStoreError(d *caddyfile.Dispenser) error {
	args := d.RemainingArgs()
	switch {
	case len(args) == 1 && (args[0] == StoreErrorDeny || args[0] == StoreErrorAllow):
		a.OnStoreError = args[0]
		return nil
	case len(args) == 4 && args[0] == StoreErrorAllow && args[2] == "per":
		n, err := strconv.ParseInt(args[1], 10, 64)
		if err != nil || n <= 0 {
			return d.Errf("on_store_error allow: %q is not a positive number of requests", args[1])
		}
		switch quota.Period(args[3]) {
		case quota.Minute, quota.Hour, quota.Day:
		default:
			return d.Errf("on_store_error allow: period must be minute, hour or day, got %q", args[3])
		}
		a.OnStoreError, a.FallbackLimit, a.FallbackPer = StoreErrorAllow, n, args[3]
		return nil
	}
	return d.Errf("on_store_error takes deny, allow, or allow <n> per minute|hour|day")
}

func parseDurationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	if !d.NextArg() {
		return 0, d.ArgErr()
	}
	dur, err := caddy.ParseDuration(d.Val())
	if err != nil || dur <= 0 {
		return 0, d.Errf("%s: %q is not a positive duration like 500ms or 30s", name, d.Val())
	}
	if d.NextArg() {
		return 0, d.ArgErr()
	}
	return caddy.Duration(dur), nil
}

func parseHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.unmarshal(h.Dispenser, h.MatcherToken)
	return m, err
}

// UnmarshalCaddyfile reads the tenant_quota handler directive:
//
//	tenant_quota [<matcher>] {
//		tokens             on|off|<matcher> # LLM token metering, default on (LLM API paths)
//		require            <permission> [on <resource>] # roles and token scopes
//		token_header       <name>...  # default Authorization x-api-key api-key
//		reserve            strict|estimate  # default strict: caps hold
//		part_tokens        image|audio|file <n> # strict bound of one part
//		max_tokens_field   max_tokens|max_completion_tokens # chat field the gateway sets
//		usage_header       <name>   # default X-Usage-Tokens
//		default_max_tokens <n>      # default 4096
//		include_usage      on|off   # default on
//		max_request_body   <bytes>  # default 4194304
//		allow_unmetered    background|batches|assistants|realtime|fine_tuning|evals|stored_state|server_tools...
//		reservation_ttl    <duration> # default 10m
//		meter <resource> [<matcher>] [<n> | +<n> | -<n>] [key <placeholder>]
//		credits <resource> <n> [per <units>]   # price in prepaid credits
//	}
//
// Every admitted request counts one `messages`; with token metering, an
// LLM request (by default a POST whose path ends in /chat/completions,
// /completions, /responses, /messages or /embeddings; with `tokens
// <matcher>`, the requests the matcher selects) also reserves its tokens
// and settles to the backend's usage.
// A meter counts a resource for the requests its matcher selects: n per
// request, +n for an object created (refused over the limit, taken back
// unless the backend answers 2xx), -n for an object deleted (released when
// the backend answers 2xx). Named matchers (@name) need the Caddyfile
// adapter, which resolves them.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	return h.unmarshal(d, func() (caddy.ModuleMap, bool, error) {
		if !d.NextArg() {
			return nil, false, nil
		}
		switch tok := d.Val(); {
		case tok == "*":
			return nil, true, nil
		case strings.HasPrefix(tok, "/"):
			return caddy.ModuleMap{"path": caddyconfig.JSON(caddyhttp.MatchPath{tok}, nil)}, true, nil
		case strings.HasPrefix(tok, "@"):
			return nil, false, fmt.Errorf("named matcher %s can only be resolved in a Caddyfile site block", tok)
		}
		return nil, false, nil
	})
}

// parseCreditRate reads `credits <resource> <n> [per <units>]`.
func parseCreditRate(d *caddyfile.Dispenser) (quota.CreditRate, error) {
	args := d.RemainingArgs()
	if len(args) != 2 && !(len(args) == 4 && args[2] == "per") {
		return quota.CreditRate{}, d.Errf("credits takes <resource> <n> [per <units>], e.g. credits tokens 1 per 1000")
	}
	rate := quota.CreditRate{Resource: args[0]}
	n, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil || n < 1 {
		return rate, d.Errf("credits %s: %q is not a positive whole number of credits", args[0], args[1])
	}
	rate.Credits = n
	if len(args) == 4 {
		per, err := strconv.ParseInt(args[3], 10, 64)
		if err != nil || per < 1 {
			return rate, d.Errf("credits %s: per %q is not a positive whole number", args[0], args[3])
		}
		rate.Per = per
	}
	return rate, nil
}

func (h *Handler) unmarshal(d *caddyfile.Dispenser, matcher func() (caddy.ModuleMap, bool, error)) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		opt := d.Val()
		switch opt {
		case "meter":
			m, err := parseMeter(d, matcher)
			if err != nil {
				return err
			}
			h.Meters = append(h.Meters, m)
			continue
		case "credits":
			rate, err := parseCreditRate(d)
			if err != nil {
				return err
			}
			h.Credits = append(h.Credits, rate)
			continue
		case "reservation_ttl":
			dur, err := parseDurationArg(d)
			if err != nil {
				return err
			}
			h.ReservationTTL = dur
			continue
		case "token_header":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return d.Errf("token_header needs header names, e.g. token_header Authorization x-api-key")
			}
			for _, n := range names {
				if strings.ContainsAny(n, " :\t\r\n") {
					return d.Errf("token_header: %q is not a header name", n)
				}
			}
			h.TokenHeaders = append(h.TokenHeaders, names...)
			continue
		case "require":
			args := d.RemainingArgs()
			rq := Requirement{}
			switch {
			case len(args) == 1:
				rq.Permission = args[0]
			case len(args) == 3 && args[1] == "on":
				rq.Permission, rq.On = args[0], args[2]
			default:
				return d.Errf("require takes <permission> [on <resource>], e.g. require chatbots.users.list on chatbots/{re.cbu.1}")
			}
			if err := quota.ValidatePermission(rq.Permission, false); err != nil {
				return d.Errf("require: %v", err)
			}
			h.Requires = append(h.Requires, rq)
			continue
		case "allow_unmetered":
			names := d.RemainingArgs()
			if len(names) == 0 {
				return d.Errf("allow_unmetered needs endpoint names (%s)", strings.Join(quota.UnmeteredEndpoints, ", "))
			}
			for _, n := range names {
				if !slices.Contains(quota.UnmeteredEndpoints, n) {
					return d.Errf("allow_unmetered: %q is not an unmetered endpoint (known: %s)", n, strings.Join(quota.UnmeteredEndpoints, ", "))
				}
			}
			h.AllowUnmetered = append(h.AllowUnmetered, names...)
			continue
		case "part_tokens":
			args := d.RemainingArgs()
			if len(args) != 2 {
				return d.Errf("part_tokens takes <image|audio|file> <n>, e.g. part_tokens image 2000")
			}
			n, err := strconv.ParseInt(args[1], 10, 64)
			if err != nil || n < 1 || n > quota.MaxLimit {
				return d.Errf("part_tokens %s: %q is not a whole number from 1 to %d", args[0], args[1], int64(quota.MaxLimit))
			}
			if args[0] != "image" && args[0] != "audio" && args[0] != "file" {
				return d.Errf("part_tokens: kind must be image, audio or file, got %q", args[0])
			}
			if h.PartTokens == nil {
				h.PartTokens = map[string]int64{}
			}
			h.PartTokens[args[0]] = n
			continue
		case "tokens":
			if d.CountRemainingArgs() == 1 {
				d.NextArg()
				if v := d.Val(); v != "on" && v != "off" {
					d.Prev()
					set, isMatcher, err := matcher()
					if err != nil {
						return d.Errf("tokens: %v", err)
					}
					if !isMatcher || set == nil {
						return d.Errf("tokens takes on, off or a matcher, got %q", v)
					}
					h.TokenRoutesRaw = caddyhttp.RawMatcherSets{set}
					continue
				}
				d.Prev()
			}
		case "include_usage", "usage_header", "default_max_tokens", "max_request_body", "reserve", "max_tokens_field":
		default:
			return d.Errf("unrecognized tenant_quota subdirective %q (known: require, token_header, tokens, reserve, allow_unmetered, part_tokens, max_tokens_field, usage_header, default_max_tokens, include_usage, max_request_body, reservation_ttl, meter, credits)", opt)
		}
		if !d.NextArg() {
			return d.Errf("%s needs a value", opt)
		}
		val := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		switch opt {
		case "tokens", "include_usage":
			var on bool
			switch val {
			case "on":
				on = true
			case "off":
			default:
				return d.Errf("%s takes on or off, got %q", opt, val)
			}
			if opt == "tokens" {
				h.Tokens = &on
			} else {
				h.IncludeUsage = &on
			}
		case "usage_header":
			h.UsageHeader = val
		case "max_tokens_field":
			if val != "max_tokens" && val != "max_completion_tokens" {
				return d.Errf("max_tokens_field takes max_tokens or max_completion_tokens, got %q", val)
			}
			h.MaxTokensField = val
		case "reserve":
			if val != string(quota.ReserveStrict) && val != string(quota.ReserveEstimate) {
				return d.Errf("reserve takes strict or estimate, got %q", val)
			}
			h.Reserve = val
		case "default_max_tokens", "max_request_body":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n <= 0 {
				return d.Errf("%s: %q is not a positive whole number", opt, val)
			}
			if opt == "default_max_tokens" {
				h.DefaultMaxTokens = n
			} else {
				h.MaxRequestBody = n
			}
		}
	}
	return nil
}

func parseAdminHandler(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(AdminHandler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile reads the tenant_quota_admin handler directive:
//
//	tenant_quota_admin [<matcher>] {
//		max_body_bytes <n>   # default 65536
//		allow_plain_http     # let non-loopback clients in without TLS
//	}
func (h *AdminHandler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "max_body_bytes":
			if !d.NextArg() {
				return d.ArgErr()
			}
			n, err := strconv.ParseInt(d.Val(), 10, 64)
			if err != nil || n <= 0 {
				return d.Errf("max_body_bytes: %q is not a positive number of bytes", d.Val())
			}
			h.MaxBodyBytes = n
			if d.NextArg() {
				return d.ArgErr()
			}
		case "allow_plain_http":
			if d.NextArg() {
				return d.ArgErr()
			}
			h.AllowPlainHTTP = true
		default:
			return d.Errf("unrecognized tenant_quota_admin subdirective %q (known: max_body_bytes, allow_plain_http)", d.Val())
		}
	}
	return nil
}

// Interface guards.
var (
	_ caddyfile.Unmarshaler = (*App)(nil)
	_ caddyfile.Unmarshaler = (*Handler)(nil)
	_ caddyfile.Unmarshaler = (*AdminHandler)(nil)
)
