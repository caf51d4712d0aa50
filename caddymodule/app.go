package caddymodule

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/tenantquota/caddy-tenant-quota/admin"
	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/boltstore"
	"github.com/tenantquota/caddy-tenant-quota/quota/events"
	"github.com/tenantquota/caddy-tenant-quota/quota/redisstore"
)

func init() {
	caddy.RegisterModule(App{})
}

// stores holds the open store and quota service of each store
// configuration, so that a config reload keeps connections, the embedded
// database and the hot cache instead of reopening them.
var stores = caddy.NewUsagePool()

// allowances holds the on_store_error allowance of each configuration of
// it (limit and period), so that a config reload carries on with what the
// previous config let through during an outage instead of granting a
// fresh allowance.
var allowances = caddy.NewUsagePool()

// sharedAllowance is a LocalAllowance in the allowances pool; it holds
// nothing to release.
type sharedAllowance struct{ *quota.LocalAllowance }

// Destruct implements caddy.Destructor.
func (sharedAllowance) Destruct() error { return nil }

// App is the tenant_quota app: it owns the one Store, the quota service
// with its hot cache, and the event hooks that handlers share.
type App struct {
	// Redis is a redis:// or rediss:// URL, or a comma-separated list of
	// host:port addresses. Empty: the embedded store.
	Redis string `json:"redis,omitempty"`
	// DBPath is the embedded store's database file. Default:
	// tenant_quota/quota.db in Caddy's data directory.
	DBPath string `json:"db_path,omitempty"`
	// AdminKeys are the bearer keys the admin API accepts; several may be
	// given for rotation. Placeholders such as {env.TQ_ADMIN_KEY} are
	// replaced when the config is loaded.
	AdminKeys []string `json:"admin_keys,omitempty"`
	// NamedAdminKeys are admin keys with a name, which the events of the
	// changes made with them carry as their actor (bare keys are named
	// "default").
	NamedAdminKeys []NamedAdminKey `json:"named_admin_keys,omitempty"`
	// Events configures event delivery and thresholds.
	Events *EventsConfig `json:"events,omitempty"`
	// Roles define the roles that may be granted to users on resources:
	// a name and the permission patterns it grants.
	Roles map[string][]string `json:"roles,omitempty"`
	// ModelGroups put requests' models in groups, in order (the first
	// match wins), whose resources (tokens.<group>, ...) count besides
	// the plain ones.
	ModelGroups quota.ModelGroups `json:"model_groups,omitempty"`
	// UnmatchedModels is "allow" (a model in no group counts the plain
	// resources only) or "refuse" (403). Default: refuse once any
	// model_group is defined (a plan's 0 on a group must not be escaped
	// by spelling a model another way), allow otherwise.
	UnmatchedModels string `json:"unmatched_models,omitempty"`
	// CacheTTL is how long a token or user stays in the hot cache
	// (default 30s).
	CacheTTL caddy.Duration `json:"cache_ttl,omitempty"`
	// Slices, when false, turns headroom slices off: every request is
	// admitted by the store (see the README, "How admission stays exact").
	// Default true.
	Slices *bool `json:"slices,omitempty"`
	// StoreTimeout is the deadline of each store call made to authenticate
	// and admit a request (default 50ms); admin API calls get 1s.
	StoreTimeout caddy.Duration `json:"store_timeout,omitempty"`
	// OnStoreError decides what a tenant sees when the store fails or is
	// too slow while admitting a request: "deny" (503, the default) or
	// "allow". A token that is not in the hot cache cannot be verified
	// without the store and always gets 503.
	OnStoreError string `json:"on_store_error,omitempty"`
	// FallbackLimit, with "allow", caps what each tenant is let through
	// per FallbackPer on this node while the store is down (0: no cap).
	FallbackLimit int64 `json:"fallback_limit,omitempty"`
	// FallbackPer is the window of FallbackLimit: minute, hour or day.
	FallbackPer string `json:"fallback_per,omitempty"`

	service     *quota.Service
	shared      *sharedStore
	fallback    *quota.LocalAllowance
	fallbackKey string // set once Provision took the allowance from the pool
	poolKey     string // set once Start opened the store
	redisAddr   string
	dbPath      string
	adminKeys   []admin.Key
	stopEvents  func()
	metrics     *metrics
	ctx         *caddy.Context
	logger      *zap.Logger
}

// NamedAdminKey is an admin key with a name and, optionally, its
// permissions (none listed: all).
type NamedAdminKey struct {
	Key         string   `json:"key"`
	Name        string   `json:"name"`
	Permissions []string `json:"permissions,omitempty"`
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "tenant_quota",
		New: func() caddy.Module { return new(App) },
	}
}

// emptyAdminKey is the error of admin key #n, written raw (placeholders
// only, since it came out empty: no secret), which is empty once its
// placeholders are replaced: it names the environment variables to set.
func emptyAdminKey(n int, raw string) error {
	var vars []string
	for _, m := range envPlaceholder.FindAllStringSubmatch(raw, -1) {
		vars = append(vars, m[1])
	}
	if len(vars) == 0 {
		return fmt.Errorf("admin key #%d (%s) is empty after replacing placeholders", n, raw)
	}
	return fmt.Errorf("admin key #%d (%s) is empty: set the environment variable %s, or remove it from admin_key", n, raw, strings.Join(vars, " and "))
}

var envPlaceholder = regexp.MustCompile(`\{env\.([^{}]+)\}`)

// Provision opens (or shares) the store and the quota service.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.ctx = &ctx
	repl := caddy.NewReplacer()
	keys := make([]NamedAdminKey, 0, len(a.AdminKeys)+len(a.NamedAdminKeys))
	for _, k := range a.AdminKeys {
		keys = append(keys, NamedAdminKey{Key: k, Name: admin.DefaultKeyName})
	}
	for i, k := range append(keys, a.NamedAdminKeys...) {
		key := repl.ReplaceKnown(k.Key, "")
		if key == "" {
			return emptyAdminKey(i+1, k.Key)
		}
		a.adminKeys = append(a.adminKeys, admin.Key{Name: k.Name, Secret: key, Permissions: k.Permissions})
	}
	if a.Events != nil {
		if err := a.Events.checkSecrets(repl); err != nil {
			return err
		}
	}
	if a.StoreTimeout == 0 {
		a.StoreTimeout = caddy.Duration(DefaultStoreTimeout)
	}
	if a.OnStoreError == "" {
		a.OnStoreError = StoreErrorDeny
	}
	if a.FallbackLimit > 0 {
		key := fmt.Sprintf("%d per %s", a.FallbackLimit, a.FallbackPer)
		limit, per := a.FallbackLimit, quota.Period(a.FallbackPer)
		val, _, err := allowances.LoadOrNew(key, func() (caddy.Destructor, error) {
			return sharedAllowance{quota.NewLocalAllowance(limit, per)}, nil
		})
		if err != nil {
			return fmt.Errorf("the on_store_error allowance: %w", err)
		}
		a.fallbackKey, a.fallback = key, val.(sharedAllowance).LocalAllowance
	}
	a.redisAddr = strings.TrimSpace(repl.ReplaceKnown(a.Redis, ""))
	a.dbPath = repl.ReplaceKnown(a.DBPath, "")
	if a.redisAddr == "" && a.dbPath == "" {
		a.dbPath = filepath.Join(caddy.AppDataDir(), "tenant_quota", "quota.db")
	}
	if a.redisAddr != "" {
		// Checked now, so that caddy validate reports it; nothing connects.
		if _, err := redisstore.ParseURL(a.redisAddr); err != nil {
			return err
		}
	}
	var err error
	if a.metrics, err = newMetrics(ctx.GetMetricsRegistry(), a); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	return nil
}

// open opens the store and the service, or shares the ones a previous
// config opened on the same store (caddy validate and caddy adapt never
// get here: they do not start apps).
func (a *App) open() error {
	redisAddr, dbPath := a.redisAddr, a.dbPath
	poolKey := "bolt|" + dbPath
	if redisAddr != "" {
		poolKey = "redis|" + redisAddr
	}
	logger := a.logger
	cacheTTL := time.Duration(a.CacheTTL)
	timeout := time.Duration(a.StoreTimeout)
	val, _, err := stores.LoadOrNew(poolKey, func() (caddy.Destructor, error) {
		var store quota.Store
		var broadcaster quota.Broadcaster
		if redisAddr != "" {
			opts, err := redisstore.ParseURL(redisAddr)
			if err != nil {
				return nil, err
			}
			opts.ContextTimeoutEnabled = true
			useRedisLogger(logger)
			client := redis.NewUniversalClient(opts)
			s, err := redisstore.New(redisstore.Options{Client: client, EventRetention: a.eventRetention(), Thresholds: a.thresholds()})
			if err != nil {
				client.Close()
				return nil, err
			}
			// Load the cluster slot map or ask the Sentinels for the master
			// now, so the first request does not pay for it within its short
			// deadline. Redis being down is not a config error.
			pingCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if err := client.Ping(pingCtx).Err(); err != nil {
				logger.Warn("redis does not answer yet", zap.Error(err))
			}
			cancel()
			store, broadcaster = s, s.Broadcaster()
			logger.Info("using the redis store", zap.Strings("addresses", opts.Addrs))
		} else {
			s, err := boltstore.Open(boltstore.Options{Path: dbPath, Thresholds: a.thresholds(), OnFlushError: func(err error) {
				logger.Error("writing counters to the embedded store", zap.Error(err))
			}})
			if err != nil {
				return nil, err
			}
			store = s
			logger.Info("using the embedded store", zap.String("path", dbPath))
		}
		shared := &sharedStore{store: store}
		svc, err := quota.NewService(quota.Options{
			Store: store, Logger: logger, CacheTTL: cacheTTL, Broadcaster: broadcaster, HotPathTimeout: timeout,
			NoSlices: a.Slices != nil && !*a.Slices,
			OnEvent:  shared.onEvent(logger),
			OnStoreCall: func(op string, took time.Duration, err error) {
				shared.metrics.Load().observe(op, took, err)
			},
		})
		if err != nil {
			store.Close()
			return nil, err
		}
		shared.service = svc
		return shared, nil
	})
	if err != nil {
		return fmt.Errorf("opening the quota store: %w", err)
	}
	a.poolKey = poolKey
	a.shared = val.(*sharedStore)
	a.service = a.shared.service
	a.shared.metrics.Store(a.metrics)
	// The store is shared across reloads; this config's tuning applies to it.
	a.service.Tune(timeout, cacheTTL)
	return nil
}

// Validate checks the configuration.
func (a *App) Validate() error {
	if a.Redis != "" && a.DBPath != "" {
		return errors.New("set either redis or db_path, not both")
	}
	if a.CacheTTL < 0 || a.StoreTimeout < 0 {
		return errors.New("cache_ttl and store_timeout must not be negative")
	}
	switch a.OnStoreError {
	case StoreErrorDeny, StoreErrorAllow:
	default:
		return fmt.Errorf("on_store_error must be %q or %q, got %q", StoreErrorDeny, StoreErrorAllow, a.OnStoreError)
	}
	if a.FallbackLimit < 0 {
		return errors.New("the on_store_error allowance must not be negative")
	}
	if a.Events != nil {
		if err := a.Events.validate(); err != nil {
			return err
		}
	}
	if err := quota.ValidateModelGroups(a.ModelGroups); err != nil {
		return err
	}
	if a.UnmatchedModels != "" && a.UnmatchedModels != "allow" && a.UnmatchedModels != "refuse" {
		return fmt.Errorf("unmatched_models must be allow or refuse, got %q", a.UnmatchedModels)
	}
	for name, perms := range a.Roles {
		if err := quota.ValidateRoleName(name); err != nil {
			return err
		}
		if len(perms) == 0 {
			return fmt.Errorf("role %s grants no permission", name)
		}
		for _, p := range perms {
			if err := quota.ValidatePermission(p, true); err != nil {
				return fmt.Errorf("role %s: %w", name, err)
			}
		}
	}
	for _, k := range a.NamedAdminKeys {
		if err := admin.ValidateKey(k.Name, k.Permissions); err != nil {
			return err
		}
	}
	if a.FallbackLimit > 0 {
		if a.OnStoreError != StoreErrorAllow {
			return errors.New("an on_store_error allowance goes with allow")
		}
		switch quota.Period(a.FallbackPer) {
		case quota.Minute, quota.Hour, quota.Day:
		default:
			return fmt.Errorf("the on_store_error allowance period must be minute, hour or day, got %q", a.FallbackPer)
		}
	}
	return nil
}

// Store error policies.
const (
	StoreErrorDeny  = "deny"
	StoreErrorAllow = "allow"
)

// DefaultStoreTimeout is the hot path's default store deadline.
const DefaultStoreTimeout = 50 * time.Millisecond

// admitOnStoreError applies the on_store_error policy to a request of
// userID whose admission failed because the store did not answer.
func (a *App) admitOnStoreError(userID string) bool {
	if a.OnStoreError != StoreErrorAllow {
		return false
	}
	return a.fallback == nil || a.fallback.Take(userID, time.Now())
}

// Start implements caddy.App: it opens the store (or shares the running
// one) and starts delivering events.
func (a *App) Start() error {
	if err := a.checkAdminReachable(); err != nil {
		return err
	}
	if err := a.open(); err != nil {
		return err
	}
	return a.startEvents()
}

// Stop implements caddy.App: it stops delivering events.
func (a *App) Stop() error {
	if a.stopEvents != nil {
		a.stopEvents()
		a.stopEvents = nil
	}
	return nil
}

// Cleanup releases this config's hold on the shared store and on the
// on_store_error allowance; the last config to let go closes the store
// and drops the allowance.
func (a *App) Cleanup() error {
	if a.fallbackKey != "" {
		_, _ = allowances.Delete(a.fallbackKey) // its Destruct cannot fail
		a.fallbackKey = ""
	}
	if a.poolKey == "" || a.service == nil {
		return nil
	}
	_, err := stores.Delete(a.poolKey)
	return err
}

// Service returns the quota service.
func (a *App) Service() *quota.Service { return a.service }

type sharedStore struct {
	store   quota.Store
	service *quota.Service
	// deliverMu guards sinkLocks, one per sink name (see deliveryLock);
	// dispatcher is the current one, woken by events.
	deliverMu  sync.Mutex
	sinkLocks  map[string]*sync.Mutex
	dispatcher atomic.Pointer[events.Dispatcher]
	// metrics are the current config's, which the service reports to.
	metrics atomic.Pointer[metrics]
}

func (s *sharedStore) Destruct() error {
	return errors.Join(s.service.Close(), s.store.Close())
}

// Interface guards.
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.Validator    = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)
