package quota

import (
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/testclock"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// TestJournalDropsLogOncePerSecond: an outage that outlasts the journal
// drops an entry per request; the drops are one ERROR line a second, each
// with how many it stands for, not one line per request.
func TestJournalDropsLogOncePerSecond(t *testing.T) {
	t.Parallel()
	core, logs := observer.New(zapcore.ErrorLevel)
	clock := testclock.At(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	j := newJournal(nil, zap.New(core), 10, clock)
	steps := []struct {
		advance     time.Duration
		adds        int
		wantLines   int   // lines so far
		wantDropped int64 // "dropped" of the last line
	}{
		{0, 10, 0, 0},   // fills the journal: nothing dropped
		{0, 1000, 1, 1}, // the first drop is logged at once, the rest held
		{500 * time.Millisecond, 5, 1, 1},
		{500 * time.Millisecond, 1, 2, 1005}, // a second later: one line for all held
		{999 * time.Millisecond, 3, 2, 1005},
		{time.Millisecond, 1, 3, 4},
	}
	for i, st := range steps {
		clock.Add(st.advance)
		for range st.adds {
			j.add(resolution{})
		}
		lines := logs.All()
		if len(lines) != st.wantLines {
			t.Fatalf("step %d: %d lines, want %d", i, len(lines), st.wantLines)
		}
		if st.wantLines > 0 {
			if got := lines[len(lines)-1].ContextMap()["dropped"]; got != st.wantDropped {
				t.Fatalf("step %d: the last line stands for %v drops, want %d", i, got, st.wantDropped)
			}
		}
		if j.len() != 10 {
			t.Fatalf("step %d: %d entries, want the journal's size", i, j.len())
		}
	}
	if total := logs.All()[2].ContextMap()["dropped_total"]; total != int64(1010) {
		t.Fatalf("dropped_total %v, want 1010", total)
	}
}
