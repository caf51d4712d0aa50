package quota

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestLimitsJSON(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, out, errField string
	}{
		{`{"messages": 100}`, `{"messages":100}`, ""},
		{`{"tokens": {"limit": 60, "per": "minute"}}`, `{"tokens":{"limit":60,"per":"minute"}}`, ""},
		{`{"tokens": [1000, {"limit": 60, "per": "minute"}, {"limit": 5, "per": "month"}]}`, `{"tokens":[1000,{"limit":60,"per":"minute"},{"limit":5,"per":"month"}]}`, ""},
		{`{"files": {"limit": 3}}`, `{"files":3}`, ""},
		{`{"files": {"limit": 3, "per": "lifetime"}}`, `{"files":3}`, ""},
		{`{"files": 0}`, `{"files":0}`, ""},
		{`{"files": null}`, `{"files":null}`, ""},
		{`{}`, `{}`, ""},
		{`{"files": -1}`, "", "limits.files"},
		{`{"files": 1.5}`, "", "limits.files"},
		{`{"files": 1e3}`, "", "limits.files"},
		{`{"files": "10"}`, "", "limits.files"},
		{`{"files": true}`, "", "limits.files"},
		{`{"files": {"limit": 1, "per": "week"}}`, "", "limits.files"},
		{`{"files": {"limit": 1, "every": "day"}}`, "", "limits.files"},
		{`{"files": {"per": "day"}}`, "", "limits.files"},
		{`{"files": [1, 2]}`, "", "limits.files"},
		{`{"files": []}`, "", "limits.files"},
		{`{"files": 1125899906842625}`, "", "limits.files"},
		{`{"Files": 1}`, "", "limits.Files"},
		{`{"a-b": 1}`, "", "limits.a-b"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			var l Limits
			err := json.Unmarshal([]byte(tt.in), &l)
			if tt.errField != "" {
				var ve *ValidationError
				if !errors.As(err, &ve) || ve.Fields[0].Field != tt.errField || !errors.Is(err, ErrInvalid) {
					t.Fatalf("want a validation error on %s, got %v", tt.errField, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			out, _ := json.Marshal(l)
			if string(out) != tt.out {
				t.Fatalf("round trip: %s, want %s", out, tt.out)
			}
		})
	}
	if err := json.Unmarshal([]byte(`[1]`), new(Limits)); err == nil {
		t.Fatal("a list is not a limits object")
	}
}

func TestLimitsMerge(t *testing.T) {
	t.Parallel()
	base := Limits{"a": {{Limit: 1}}, "b": {{Limit: 2}}}
	got := base.Merge(Limits{"b": nil, "c": {{Limit: 3, Per: Day}}})
	out, _ := json.Marshal(got)
	if string(out) != `{"a":1,"c":{"limit":3,"per":"day"}}` {
		t.Fatalf("merge: %s", out)
	}
	if len(base) != 2 {
		t.Fatal("merge changed its receiver")
	}
}

func TestWindows(t *testing.T) {
	t.Parallel()
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		per        Period
		now        string
		start, end string
	}{
		{Minute, "2024-02-29T23:59:59Z", "2024-02-29T23:59:00Z", "2024-03-01T00:00:00Z"},
		{Hour, "2024-02-29T23:59:59Z", "2024-02-29T23:00:00Z", "2024-03-01T00:00:00Z"},
		{Day, "2024-02-29T23:59:59Z", "2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z"},
		{Month, "2024-02-29T23:59:59Z", "2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"},
		{Month, "2024-12-31T23:59:59Z", "2024-12-01T00:00:00Z", "2025-01-01T00:00:00Z"},
		{Day, "2024-06-01T01:30:00+05:00", "2024-05-31T00:00:00Z", "2024-06-01T00:00:00Z"},
		{Month, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z"},
	}
	for _, tt := range tests {
		t.Run(string(tt.per)+" "+tt.now, func(t *testing.T) {
			start, end := tt.per.Window(at(tt.now))
			if !start.Equal(at(tt.start)) || !end.Equal(at(tt.end)) {
				t.Fatalf("window %v - %v, want %s - %s", start, end, tt.start, tt.end)
			}
		})
	}
	if s, e := Lifetime.Window(time.Now()); !s.IsZero() || !e.IsZero() {
		t.Fatal("lifetime has no window")
	}
}

func TestApplyCharges(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 30, 0, time.UTC)
	counters := map[string]CounterState{}
	step := func(amount, limit int64, per Period, at time.Time, allowed bool, used int64) {
		t.Helper()
		adm := ApplyCharges(counters, []Charge{{Resource: "m", Per: per, Limit: limit, Amount: amount}}, at)
		if adm.Allowed != allowed || adm.Used[0] != used {
			t.Fatalf("amount %d at %v: allowed=%v used=%d, want %v %d", amount, at, adm.Allowed, adm.Used[0], allowed, used)
		}
	}
	step(2, 2, Minute, now, true, 2)
	step(1, 2, Minute, now, false, 2)
	step(1, 2, Minute, now.Add(30*time.Second), true, 1) // a new minute
	step(-3, 2, Minute, now.Add(31*time.Second), true, 0)
}

func TestTokenSecret(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		s, err := NewTokenSecret()
		if err != nil {
			t.Fatal(err)
		}
		if len(s) != TokenLength || !strings.HasPrefix(s, TokenPrefix) || seen[s] {
			t.Fatalf("bad or repeated secret %q", s)
		}
		seen[s] = true
		hash, ok := ParseTokenSecret(s)
		if !ok || hash != HashTokenSecret(s) || len(hash) != 64 {
			t.Fatalf("a fresh secret does not parse: %q", s)
		}
		// Any one changed character breaks the checksum.
		b := []byte(s)
		pos := len(TokenPrefix) + i%(TokenLength-len(TokenPrefix))
		if b[pos] == 'a' {
			b[pos] = 'b'
		} else {
			b[pos] = 'a'
		}
		if _, ok := ParseTokenSecret(string(b)); ok {
			t.Fatalf("a mistyped secret parses: %q", b)
		}
	}
	for _, bad := range []string{"", "tq_", "Bearer x", "sk-" + strings.Repeat("a", 49), strings.Repeat("a", TokenLength)} {
		if _, ok := ParseTokenSecret(bad); ok {
			t.Fatalf("%q parses", bad)
		}
	}
}
