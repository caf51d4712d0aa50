package redisstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// Defaults for Options.
const (
	DefaultPrefix  = "tq"
	DefaultTimeout = time.Second
)

// Options configures a Store.
type Options struct {
	// Client is the Redis connection; required. The Store takes ownership:
	// Store.Close closes it. Build it with ContextTimeoutEnabled so that
	// deadlines reach the socket.
	Client redis.UniversalClient
	// Prefix starts every key; DefaultPrefix when empty. It must not contain
	// '{' or '}', which would break the per-user hash tags.
	Prefix string
	// Timeout is the deadline of each Store call whose context has none;
	// DefaultTimeout when zero.
	Timeout time.Duration
}

// Store is a quota.Store on Redis. It is safe for concurrent use; the zero
// value is not usable, call New.
type Store struct {
	rdb     redis.UniversalClient
	prefix  string
	timeout time.Duration
}

// New returns a Store over opts.Client. It does not contact Redis.
func New(opts Options) (*Store, error) {
	if opts.Client == nil {
		return nil, errors.New("redisstore: a redis client is required")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if strings.ContainsAny(opts.Prefix, "{}") {
		return nil, fmt.Errorf("redisstore: prefix %q must not contain '{' or '}'", opts.Prefix)
	}
	if opts.Timeout < 0 {
		return nil, fmt.Errorf("redisstore: timeout must not be negative, got %v", opts.Timeout)
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	return &Store{rdb: opts.Client, prefix: opts.Prefix, timeout: opts.Timeout}, nil
}

// Close closes the client.
func (s *Store) Close() error {
	if err := s.rdb.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("close redis client: %w", err)
	}
	return nil
}

// ParseURL turns a Redis address setting into client options for
// redis.NewUniversalClient: either one redis:// or rediss:// URL (with the
// query parameters of redis.ParseURL), or a comma-separated list of
// host:port addresses, which selects a Cluster client when it holds more
// than one. ContextTimeoutEnabled is always set. Errors never repeat the URL,
// which may hold a password.
func ParseURL(raw string) (*redis.UniversalOptions, error) {
	raw = strings.TrimSpace(raw)
	if strings.Contains(raw, "://") {
		o, err := redis.ParseURL(raw)
		if err != nil {
			var ue *url.Error
			if errors.As(err, &ue) {
				err = ue.Err
			}
			return nil, fmt.Errorf("invalid redis url: %w", err)
		}
		if o.Network != "tcp" {
			return nil, errors.New("invalid redis url: only redis:// and rediss:// are supported")
		}
		return universal(o), nil
	}
	var addrs []string
	for _, a := range strings.Split(raw, ",") {
		a = strings.TrimSpace(a)
		if _, _, err := net.SplitHostPort(a); err != nil {
			return nil, fmt.Errorf("invalid redis address %q, want host:port or a redis:// url: %w", a, err)
		}
		addrs = append(addrs, a)
	}
	return &redis.UniversalOptions{Addrs: addrs, ContextTimeoutEnabled: true}, nil
}

// universal copies what redis.ParseURL can set into UniversalOptions.
func universal(o *redis.Options) *redis.UniversalOptions {
	return &redis.UniversalOptions{
		Addrs:                   []string{o.Addr},
		ClientName:              o.ClientName,
		DB:                      o.DB,
		Protocol:                o.Protocol,
		Username:                o.Username,
		Password:                o.Password,
		MaxRetries:              o.MaxRetries,
		MinRetryBackoff:         o.MinRetryBackoff,
		MaxRetryBackoff:         o.MaxRetryBackoff,
		DialTimeout:             o.DialTimeout,
		ReadTimeout:             o.ReadTimeout,
		WriteTimeout:            o.WriteTimeout,
		ContextTimeoutEnabled:   true,
		PipelineReadBufferSize:  o.PipelineReadBufferSize,
		PipelineWriteBufferSize: o.PipelineWriteBufferSize,
		PipelinePoolSize:        o.PipelinePoolSize,
		PoolFIFO:                o.PoolFIFO,
		PoolSize:                o.PoolSize,
		MaxConcurrentDials:      o.MaxConcurrentDials,
		PoolTimeout:             o.PoolTimeout,
		MinIdleConns:            o.MinIdleConns,
		MaxIdleConns:            o.MaxIdleConns,
		MaxActiveConns:          o.MaxActiveConns,
		ConnMaxIdleTime:         o.ConnMaxIdleTime,
		ConnMaxLifetime:         o.ConnMaxLifetime,
		ConnMaxLifetimeJitter:   o.ConnMaxLifetimeJitter,
		TLSConfig:               o.TLSConfig,
	}
}

// withDeadline gives ctx the store's timeout unless it has a deadline.
func (s *Store) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.timeout)
}

// cleanupContext is for undoing a half-done change after the caller's
// context failed: not cancelled with it, but still bounded.
func (s *Store) cleanupContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), s.timeout)
}

// validID reports whether id can name a user: not empty and free of the
// braces that delimit the hash tag.
func validID(id string) bool {
	return id != "" && !strings.ContainsAny(id, "{}")
}

func (s *Store) tag(userID string) string   { return s.prefix + ":{" + userID + "}" }
func (s *Store) userKey(id string) string   { return s.tag(id) + ":user" }
func (s *Store) usageKey(id string) string  { return s.tag(id) + ":usage" }
func (s *Store) tokensKey(id string) string { return s.tag(id) + ":tokens" }
func (s *Store) emailKey(e string) string   { return s.prefix + ":email:" + e }
func (s *Store) extKey(ext string) string   { return s.prefix + ":ext:" + ext }
func (s *Store) tokKey(hash string) string  { return s.prefix + ":tok:" + hash }
func (s *Store) usersKey() string           { return s.prefix + ":users" }

// Interface guard.
var _ quota.Store = (*Store)(nil)
