package caddymodule

import (
	"fmt"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestRateLimitedLog: a burst of one message writes one line; another
// message is not held back by it.
func TestRateLimitedLog(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	l := &rateLimitedLog{last: map[string]*logState{}}
	for range 100 {
		l.write(zap.New(core), zapcore.ErrorLevel, "store down")
	}
	l.write(zap.New(core), zapcore.WarnLevel, "other")
	if n := logs.FilterMessage("store down").Len(); n != 1 {
		t.Fatalf("%d lines for a burst of 100", n)
	}
	if logs.FilterMessage("other").Len() != 1 {
		t.Fatal("another message was held back")
	}
	if l.last["store down"].suppressed != 99 {
		t.Fatalf("suppressed %d", l.last["store down"].suppressed)
	}
}

// TestRateLimitedLogBounded: many distinct messages do not grow the log's
// memory without end, and go-redis's lines (each with its own address or
// error text) are one message.
func TestRateLimitedLogBounded(t *testing.T) {
	core, logs := observer.New(zapcore.DebugLevel)
	l := &rateLimitedLog{last: map[string]*logState{}}
	for i := range 10 * maxLogStates {
		l.write(zap.New(core), zapcore.WarnLevel, fmt.Sprintf("message %d", i))
	}
	if n := len(l.last); n > maxLogStates {
		t.Fatalf("%d messages remembered, want at most %d", n, maxLogStates)
	}
	if logs.Len() != 10*maxLogStates {
		t.Fatalf("%d lines for %d distinct messages", logs.Len(), 10*maxLogStates)
	}
	saved := storeLog
	storeLog = &rateLimitedLog{last: map[string]*logState{}}
	defer func() { storeLog = saved }()
	logs.TakeAll()
	r := redisLogger{logger: zap.New(core)}
	for i := range 50 {
		r.Printf(t.Context(), "dial tcp 10.0.0.%d:6379: connection refused", i)
	}
	if n := logs.Len(); n != 1 || len(storeLog.last) != 1 {
		t.Fatalf("go-redis lines: %d written, %d remembered; want 1 and 1", n, len(storeLog.last))
	}
	if d := logs.All()[0].ContextMap()["detail"]; d != "dial tcp 10.0.0.0:6379: connection refused" {
		t.Fatalf("detail %v", d)
	}
}
