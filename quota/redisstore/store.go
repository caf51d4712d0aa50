package redisstore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"sync"
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
	// EventRetention is how long the outbox keeps events;
	// DefaultEventRetention when zero.
	EventRetention time.Duration
	// Thresholds are the percentages of a limit at which usage.threshold
	// events fire (none: no threshold events).
	Thresholds []int64
	// RecordsPerHash caps each of a user's request-record hashes
	// (charges.lua): with at most three of them live, a user's records
	// take a bounded amount of memory whatever its traffic.
	// DefaultRecordsPerHash when zero.
	RecordsPerHash int
	// DistinctKeys caps the distinct keys (of meters with a key) a user
	// keeps: past it a new key is counted but not remembered, so that a
	// tenant sending ever new keys cannot grow Redis without bound.
	// DefaultDistinctKeys when zero.
	DistinctKeys int
}

// DefaultDistinctKeys is the default Options.DistinctKeys (about 10 MB of
// keys per user at most).
const DefaultDistinctKeys = quota.DefaultDistinctKeys

// DefaultRecordsPerHash is the default Options.RecordsPerHash: a user
// keeps at most 30,000 request records (about 3 MB), which hold a request
// for two minutes below about 80 requests a second that reach Redis, and
// for at least 10,000 of its requests (10 s at 1,000 a second) above.
const DefaultRecordsPerHash = 10000

// Store is a quota.Store on Redis. It is safe for concurrent use; the zero
// value is not usable, call New.
type Store struct {
	rdb       redis.UniversalClient
	prefix    string
	timeout   time.Duration
	retention time.Duration
	percents  string // thresholds, comma separated
	caps      string // "<Options.RecordsPerHash>,<Options.DistinctKeys>" (charges.lua)
	batch     *batcher
	closeOnce sync.Once
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
	if opts.EventRetention <= 0 {
		opts.EventRetention = DefaultEventRetention
	}
	if opts.RecordsPerHash < 0 || opts.DistinctKeys < 0 {
		return nil, fmt.Errorf("redisstore: records per hash and distinct keys must not be negative, got %d and %d", opts.RecordsPerHash, opts.DistinctKeys)
	}
	if opts.RecordsPerHash == 0 {
		opts.RecordsPerHash = DefaultRecordsPerHash
	}
	if opts.DistinctKeys == 0 {
		opts.DistinctKeys = DefaultDistinctKeys
	}
	var pcts []string
	for _, p := range opts.Thresholds {
		if p < 1 || p > 1000 {
			return nil, fmt.Errorf("redisstore: thresholds are percentages from 1 to 1000, got %d", p)
		}
		pcts = append(pcts, strconv.FormatInt(p, 10))
	}
	return &Store{rdb: opts.Client, prefix: opts.Prefix, timeout: opts.Timeout, retention: opts.EventRetention, percents: strings.Join(pcts, ","),
		caps: strconv.Itoa(opts.RecordsPerHash) + "," + strconv.Itoa(opts.DistinctKeys), batch: newBatcher(opts.Client)}, nil
}

// Close stops the pipelines and closes the client.
func (s *Store) Close() error {
	s.closeOnce.Do(s.batch.close)
	if err := s.rdb.Close(); err != nil && !errors.Is(err, redis.ErrClosed) {
		return fmt.Errorf("close redis client: %w", err)
	}
	return nil
}

// ParseURL turns a Redis address setting into client options for
// redis.NewUniversalClient. It accepts:
//
//	redis://[[user]:password@]host[:port][/db][?option=value&...]
//	    one server; rediss:// for TLS
//	host:port[,host:port...]
//	    one server, or a Cluster when more than one address is given
//	redis-cluster://[[user]:password@]host[:port][,host[:port]...][?option=value&...]
//	    a Cluster, found through one or more seed nodes; rediss-cluster:// for TLS
//	redis-sentinel://[[user]:password@]host[:port][,host[:port]...]/master[/db][?option=value&...]
//	    the current master of the Sentinels' group named master; rediss-sentinel://
//	    for TLS to both the Sentinels and the servers
//
// The options are those of redis.ParseURL (dial_timeout, pool_size, ...).
// Ports default to 6379, and to 26379 for Sentinels. In a Sentinel URL the
// user and password are the servers'; Sentinels that require credentials of
// their own take the options sentinel_username and sentinel_password. With
// TLS, each connection checks the certificate against the host it dials.
// ContextTimeoutEnabled is always set. Errors never repeat the URL, which
// may hold a password.
func ParseURL(raw string) (*redis.UniversalOptions, error) {
	raw = strings.TrimSpace(raw)
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return parseAddrs(raw)
	}
	switch scheme = strings.ToLower(scheme); scheme {
	case "redis-cluster", "rediss-cluster":
		return parseMultiHost(strings.TrimSuffix(scheme, "-cluster"), rest, false)
	case "redis-sentinel", "rediss-sentinel":
		return parseMultiHost(strings.TrimSuffix(scheme, "-sentinel"), rest, true)
	}
	o, err := parseOne(raw)
	if err != nil {
		return nil, err
	}
	return universal(o), nil
}

// parseOne is redis.ParseURL restricted to TCP, with errors that do not
// repeat the URL.
func parseOne(raw string) (*redis.Options, error) {
	o, err := redis.ParseURL(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, fmt.Errorf("invalid redis url: %w", err)
	}
	if o.Network != "tcp" {
		return nil, errors.New("invalid redis url: only redis://, rediss://, redis-cluster:// and redis-sentinel:// (or rediss-) are supported")
	}
	return o, nil
}

// parseAddrs reads a comma-separated list of host:port.
func parseAddrs(raw string) (*redis.UniversalOptions, error) {
	var addrs []string
	for i, a := range strings.Split(raw, ",") {
		a = strings.TrimSpace(a)
		// The value is not repeated: a mistyped URL may hold a password.
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || port == "" || strings.ContainsAny(a, "@/ ") {
			return nil, fmt.Errorf("invalid redis address #%d: want host:port, or a redis:// URL such as redis://:password@host:6379/0", i+1)
		}
		addrs = append(addrs, a)
	}
	return &redis.UniversalOptions{Addrs: addrs, ContextTimeoutEnabled: true}, nil
}

// parseMultiHost reads the part after "://" of a Cluster or Sentinel URL.
// It takes the host list and the master name out and hands the rest, as a
// URL of scheme base ("redis" or "rediss") on the first host, to
// redis.ParseURL.
func parseMultiHost(base, rest string, sentinel bool) (*redis.UniversalOptions, error) {
	kind, defaultPort := "cluster", "6379"
	if sentinel {
		kind, defaultPort = "sentinel", "26379"
	}
	rest, _, _ = strings.Cut(rest, "#")
	rest, query, _ := strings.Cut(rest, "?")
	authority, path, _ := strings.Cut(rest, "/")
	userinfo := ""
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		userinfo, authority = authority[:i+1], authority[i+1:]
	}
	var addrs []string
	for i, h := range strings.Split(authority, ",") {
		addr, ok := withPort(strings.TrimSpace(h), defaultPort)
		if !ok {
			// Not quoted: a password with an unescaped '/' or '@' could end
			// up here.
			return nil, fmt.Errorf("invalid redis %s url: address #%d is not host[:port]", kind, i+1)
		}
		addrs = append(addrs, addr)
	}
	q, err := url.ParseQuery(query)
	if err != nil {
		return nil, fmt.Errorf("invalid redis %s url: malformed query", kind)
	}
	var master, sentUser, sentPass string
	db := path
	if sentinel {
		sentUser, sentPass = q.Get("sentinel_username"), q.Get("sentinel_password")
		q.Del("sentinel_username")
		q.Del("sentinel_password")
		master, db, _ = strings.Cut(path, "/")
		if master, err = url.PathUnescape(master); err != nil || master == "" {
			return nil, errors.New("invalid redis sentinel url: want the master name as the path, as in redis-sentinel://host:26379/mymaster")
		}
	}
	one := base + "://" + userinfo + addrs[0] + "/" + db
	if enc := q.Encode(); enc != "" {
		one += "?" + enc
	}
	o, err := parseOne(one)
	if err != nil {
		return nil, err
	}
	if !sentinel && o.DB != 0 {
		return nil, errors.New("invalid redis cluster url: a cluster has database 0 only")
	}
	if o.TLSConfig != nil {
		// Check each server against its own name, not the first host's.
		o.TLSConfig.ServerName = ""
	}
	u := universal(o)
	u.Addrs = addrs
	u.MasterName = master
	u.SentinelUsername, u.SentinelPassword = sentUser, sentPass
	u.IsClusterMode = !sentinel
	return u, nil
}

// withPort returns h as host:port, with port def if h has none, and whether
// h is a valid address.
func withPort(h, def string) (string, bool) {
	host, port, err := net.SplitHostPort(h)
	if err != nil {
		host, port, err = net.SplitHostPort(h + ":" + def)
	}
	if err != nil || host == "" {
		return "", false
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", false
	}
	return net.JoinHostPort(host, port), true
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

// validID is quota.ValidID (which also keeps out the braces that delimit
// the hash tag).
func validID(id string) bool { return quota.ValidID(id) }

func (s *Store) tag(userID string) string   { return s.prefix + ":{" + userID + "}" }
func (s *Store) userKey(id string) string   { return s.tag(id) + ":user" }
func (s *Store) usageKey(id string) string  { return s.tag(id) + ":usage" }
func (s *Store) tokensKey(id string) string { return s.tag(id) + ":tokens" }
func (s *Store) keysKey(id string) string   { return s.tag(id) + ":keys" }
func (s *Store) emailKey(e string) string   { return s.prefix + ":email:" + e }
func (s *Store) extKey(ext string) string   { return s.prefix + ":ext:" + ext }
func (s *Store) tokKey(hash string) string  { return s.prefix + ":tok:" + hash }
func (s *Store) usersKey() string           { return s.prefix + ":users" }

// Interface guard.
var _ quota.Store = (*Store)(nil)
