package redisstore

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// Broadcaster carries hot-cache invalidations between the nodes that share
// one Redis over pub/sub (on Cluster, PUBLISH reaches every node's
// subscribers). Each message is the sender's node id followed by the cache
// keys, one per line; a node ignores its own messages.
type Broadcaster struct {
	rdb     redis.UniversalClient
	channel string
	node    string
	timeout time.Duration
}

// Broadcaster returns a quota.Broadcaster on the store's Redis.
func (s *Store) Broadcaster() *Broadcaster {
	return &Broadcaster{rdb: s.rdb, channel: s.prefix + ":invalidate", node: quota.NewID(), timeout: s.timeout}
}

// Publish sends keys to the other nodes.
func (b *Broadcaster) Publish(ctx context.Context, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, b.timeout)
		defer cancel()
	}
	return b.rdb.Publish(ctx, b.channel, b.node+"\n"+strings.Join(keys, "\n")).Err()
}

// Listen subscribes until ctx is done. go-redis reconnects a broken
// subscription by itself and subscribes again; every subscription
// confirmation, the first and each after a reconnect, calls flush.
func (b *Broadcaster) Listen(ctx context.Context, drop func(keys []string), flush func()) {
	ps := b.rdb.Subscribe(ctx, b.channel)
	// A blocked Receive does not watch ctx; closing the subscription ends it.
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
		case <-stopped:
		}
		ps.Close()
	}()
	for {
		msg, err := ps.Receive(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			// The next Receive reconnects; do not spin while Redis is down.
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind == "subscribe" {
				flush()
			}
		case *redis.Message:
			node, keys, _ := strings.Cut(m.Payload, "\n")
			if node != b.node && keys != "" {
				drop(strings.Split(keys, "\n"))
			}
		}
	}
}

var _ quota.Broadcaster = (*Broadcaster)(nil)
