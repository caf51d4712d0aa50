package caddymodule

import (
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
