package caddymodule

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// rateLimitedLog writes at most one line per second per message, with the
// count of the lines it held back since the last one: an outage must not
// write one line per request.
type rateLimitedLog struct {
	mu   sync.Mutex
	last map[string]*logState
}

type logState struct {
	at         time.Time
	suppressed int
}

var storeLog = &rateLimitedLog{last: map[string]*logState{}}

// maxLogStates bounds the messages rateLimitedLog remembers: messages are
// constants, but a bound keeps a caller that formats one from growing the
// map without end.
const maxLogStates = 256

// write logs msg at level on logger unless it was logged less than a
// second ago.
func (l *rateLimitedLog) write(logger *zap.Logger, level zapcore.Level, msg string, fields ...zap.Field) {
	l.mu.Lock()
	now := time.Now()
	st := l.last[msg]
	if st == nil {
		if len(l.last) >= maxLogStates {
			for k, old := range l.last {
				if now.Sub(old.at) >= time.Second {
					delete(l.last, k)
				}
			}
			if len(l.last) >= maxLogStates {
				clear(l.last) // all within the second: lose their counts, not memory
			}
		}
		st = &logState{}
		l.last[msg] = st
	}
	if now.Sub(st.at) < time.Second {
		st.suppressed++
		l.mu.Unlock()
		return
	}
	held := st.suppressed
	st.at, st.suppressed = now, 0
	l.mu.Unlock()
	if c := logger.Check(level, msg); c != nil {
		if held > 0 {
			fields = append(fields, zap.Int("suppressed_since_last", held))
		}
		c.Write(fields...)
	}
}

// redisLogger routes go-redis's own log lines (dial errors, pool notices)
// through Caddy's logger, rate-limited, instead of stderr.
type redisLogger struct{ logger *zap.Logger }

// Printf logs one go-redis line, rate-limited as one message whatever
// its text (which names addresses and errors).
func (r redisLogger) Printf(_ context.Context, format string, v ...any) {
	storeLog.write(r.logger, zapcore.WarnLevel, "redis client", zap.String("detail", fmt.Sprintf(format, v...)))
}

var setRedisLogger sync.Once

func useRedisLogger(logger *zap.Logger) {
	setRedisLogger.Do(func() { redis.SetLogger(redisLogger{logger: logger.Named("redis")}) })
}
