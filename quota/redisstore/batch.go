package redisstore

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// batcher coalesces concurrent script calls of the request path
// (admissions, settlements) into pipelines: whatever calls are waiting when
// a worker is free go out together, with no added wait, so that N
// concurrent admissions cost one write and one read on one connection
// rather than N of each (as envoyproxy/ratelimit pipelines its calls).
// Each caller still waits only until its own deadline: a call it stopped
// waiting for may yet run, exactly as a timed-out EVALSHA may, and the
// caller settles it through the journal.
type batcher struct {
	rdb  redis.UniversalClient
	in   chan *scriptCall
	stop chan struct{}
	wg   sync.WaitGroup
	// pipelines and calls count what went out.
	pipelines, calls atomic.Int64
}

type scriptCall struct {
	ctx    context.Context
	script *redis.Script
	keys   []string
	args   []any
	cmd    *redis.Cmd
	done   chan struct{}
}

const (
	// batchWorkers pipelines may be in flight at once.
	batchWorkers = 4
	// maxBatch calls at most go in one pipeline.
	maxBatch = 64
)

func newBatcher(rdb redis.UniversalClient) *batcher {
	b := &batcher{rdb: rdb, in: make(chan *scriptCall), stop: make(chan struct{})}
	for range batchWorkers {
		b.wg.Add(1)
		go b.work()
	}
	return b
}

func (b *batcher) close() {
	close(b.stop)
	b.wg.Wait()
}

// run runs script like script.Run, in the next pipeline that goes out.
func (b *batcher) run(ctx context.Context, script *redis.Script, keys []string, args ...any) *redis.Cmd {
	c := &scriptCall{ctx: ctx, script: script, keys: keys, args: args, done: make(chan struct{})}
	select {
	case b.in <- c:
	case <-b.stop:
		return failed(ctx, redis.ErrClosed)
	case <-ctx.Done():
		return failed(ctx, ctx.Err())
	}
	select {
	case <-c.done:
		return c.cmd
	case <-ctx.Done():
		return failed(ctx, ctx.Err())
	}
}

func failed(ctx context.Context, err error) *redis.Cmd {
	cmd := redis.NewCmd(ctx)
	cmd.SetErr(err)
	return cmd
}

func (b *batcher) work() {
	defer b.wg.Done()
	batch := make([]*scriptCall, 0, maxBatch)
	for {
		select {
		case <-b.stop:
			return
		case c := <-b.in:
			batch = append(batch[:0], c)
		}
	more:
		for len(batch) < maxBatch {
			select {
			case c := <-b.in:
				batch = append(batch, c)
			default:
				break more
			}
		}
		b.exec(batch)
	}
}

// exec sends the calls whose callers still wait in one pipeline, with the
// latest of their deadlines.
func (b *batcher) exec(batch []*scriptCall) {
	var deadline time.Time
	live := batch[:0]
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.cmd = failed(c.ctx, err) // never sent
			close(c.done)
			continue
		}
		if d, ok := c.ctx.Deadline(); !ok {
			deadline = time.Now().Add(DefaultTimeout)
		} else if d.After(deadline) {
			deadline = d
		}
		live = append(live, c)
	}
	if len(live) == 0 {
		return
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	b.pipelines.Add(1)
	b.calls.Add(int64(len(live)))
	pipe := b.rdb.Pipeline()
	for _, c := range live {
		c.cmd = c.script.EvalSha(ctx, pipe, c.keys, c.args...)
	}
	_, _ = pipe.Exec(ctx) // each call has its own result
	for _, c := range live {
		// Not in the script cache (a restarted or flushed Redis): once
		// more on its own, which loads it.
		if err := c.cmd.Err(); err != nil && isNoScript(err) {
			c.cmd = c.script.Run(ctx, b.rdb, c.keys, c.args...)
		}
		close(c.done)
	}
}

func isNoScript(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "NOSCRIPT")
}
