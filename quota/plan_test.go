package quota_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/quota"
	"github.com/tenantquota/caddy-tenant-quota/quota/llmusage"
)

// plan builds the plan of a chat completion with body on route.
func plan(t testing.TB, route quota.Route, api quota.API, body string) *quota.Plan {
	t.Helper()
	r, err := llmusage.ParseRequest([]byte(body))
	if err != nil {
		t.Fatal(err)
	}
	return route.Plan(quota.MeterUses{}, quota.TokenRequest{API: api, Body: r, Size: int64(len(body))})
}

func amountOf(uses []quota.Use, resource string) int64 {
	var n int64
	for _, u := range uses {
		if u.Resource == resource {
			n += u.Amount
		}
	}
	return n
}

func TestPlanReservations(t *testing.T) {
	t.Parallel()
	strict, estimate := quota.Route{}, quota.Route{Reserve: quota.ReserveEstimate}
	hello := `{"model":"m","messages":[{"role":"user","content":"hello"}]`
	tests := []struct {
		name         string
		route        quota.Route
		api          quota.API
		body         string
		input, out   int64 // reserved
		sets         string
		setsN        int64
		messagesOnly bool
	}{
		{"strict bounds the whole body", strict, quota.APIChat, hello + `,"max_tokens":20}`, 0, 20, "", 0, false},
		{"estimate is bytes / 4", estimate, quota.APIChat, hello + `,"max_tokens":20}`, 2, 20, "", 0, false},
		{"no maximum: the default, written into the body", strict, quota.APIChat, hello + `}`, 0, quota.DefaultMaxTokens, "max_tokens", quota.DefaultMaxTokens, false},
		{"responses API field", strict, quota.APIResponses, `{"input":"hi"}`, 0, quota.DefaultMaxTokens, "max_output_tokens", quota.DefaultMaxTokens, false},
		{"embeddings have no output", strict, quota.APIEmbeddings, `{"input":"hi"}`, 0, 0, "", 0, false},
		{"an empty prompt still reserves", strict, quota.APIChat, `{}`, 0, quota.DefaultMaxTokens, "max_tokens", quota.DefaultMaxTokens, false},
		{"not an LLM route", strict, quota.APINone, `{"messages":"x","max_tokens":5}`, 0, 0, "", 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := plan(t, tt.route, tt.api, tt.body)
			uses := p.Uses()
			if amountOf(uses, quota.ResourceMessages) != 1 {
				t.Fatalf("messages: %+v", uses)
			}
			if tt.messagesOnly {
				if len(uses) != 1 || p.MetersTokens() {
					t.Fatalf("uses %+v", uses)
				}
				return
			}
			in, out := amountOf(uses, quota.ResourceInputTokens), amountOf(uses, quota.ResourceOutputTokens)
			if tt.route.Reserve == quota.ReserveStrict || tt.route.Reserve == "" {
				// The strict bound: at least every byte of the body.
				if in < int64(len(tt.body)) {
					t.Fatalf("strict input %d below the %d bytes of the body", in, len(tt.body))
				}
			} else if in != tt.input {
				t.Fatalf("input %d, want %d", in, tt.input)
			}
			if out != tt.out || amountOf(uses, quota.ResourceTokens) != in+out {
				t.Fatalf("output %d (want %d), tokens %d", out, tt.out, amountOf(uses, quota.ResourceTokens))
			}
			field, n, ok := p.OutputMax()
			if field != tt.sets || n != tt.setsN || ok != (tt.sets != "") {
				t.Fatalf("OutputMax = %q %d %v", field, n, ok)
			}
		})
	}
}

func TestPlanOpaqueBody(t *testing.T) {
	t.Parallel()
	p := (&quota.Route{}).Plan(quota.MeterUses{}, quota.TokenRequest{API: quota.APIChat, Size: 1 << 20})
	if in := amountOf(p.Uses(), quota.ResourceInputTokens); in != 1<<20 {
		t.Fatalf("a body the gateway cannot read reserves its size: %d", in)
	}
	if _, _, ok := p.OutputMax(); ok {
		t.Fatal("a maximum is written into a body that cannot be read")
	}
	// A backend error without usage still costs the estimate: the body was
	// forwarded unread.
	if got := p.Tokens(quota.Outcome{Status: 400}); got.Input != 1<<18 {
		t.Fatalf("charged %+v", got)
	}
	tiny := (&quota.Route{}).Plan(quota.MeterUses{}, quota.TokenRequest{API: quota.APIChat, Size: 1})
	if got := tiny.Tokens(quota.Outcome{Status: 415}); got.Input+got.Output == 0 {
		t.Fatal("an unreadable body was charged nothing")
	}
}

func TestPlanTokensClampAndHangUp(t *testing.T) {
	t.Parallel()
	p := plan(t, quota.Route{Reserve: quota.ReserveEstimate}, quota.APIChat, `{"messages":[{"role":"user","content":"`+strings.Repeat("w", 28)+`"}],"max_tokens":100}`)
	got := p.Tokens(quota.Outcome{Status: 200, Reported: llmusage.Usage{InputTokens: math.MaxInt64, OutputTokens: math.MaxInt64, Found: true}})
	if got.Input != quota.MaxLimit || got.Output != quota.MaxLimit {
		t.Fatalf("absurd usage: %+v", got)
	}
	if n := amountOf(got.Uses(), quota.ResourceTokens); n < 0 || n > 2*quota.MaxLimit {
		t.Fatalf("tokens %d", n)
	}
	// A hang-up mid-stream with a partial report: at least the estimate
	// and what was sent.
	got = p.Tokens(quota.Outcome{Status: 200, Reported: llmusage.Usage{InputTokens: 3, Found: true}, BytesOut: 200, ClientGone: true})
	if got.Input != 7 || got.Output != 50 {
		t.Fatalf("hang-up: %+v", got)
	}
	got = p.Tokens(quota.Outcome{Status: 200, BytesOut: 1 << 30, ClientGone: true})
	if got.Input != 7 || got.Output != 100 {
		t.Fatalf("hang-up after a long stream is capped at the reservation: %+v", got)
	}
}

func TestPlanCreatedKeys(t *testing.T) {
	t.Parallel()
	route := quota.Route{}
	p := route.Plan(quota.MeterUses{Created: []quota.Use{{Resource: "files", Amount: 1}}}, quota.TokenRequest{})
	if held := p.Uses()[1]; held.Resource != "files" || held.Hold <= 0 && route.Hold > 0 {
		t.Fatalf("uses %+v", p.Uses())
	}
	ok := p.Settlement(quota.Outcome{Status: 201, CreatedKeys: []string{"file-1"}})
	if len(ok) != 1 || ok[0].Key != "file-1" || ok[0].Amount != 1 {
		t.Fatalf("created: %+v", ok)
	}
	if failed := p.Settlement(quota.Outcome{Status: 500}); len(failed) != 0 {
		t.Fatalf("a failed create counts: %+v", failed)
	}
}

// TestAdmitFitsTheOutput: a request without a maximum, for a tenant with
// less left than the default, is served with the largest maximum that
// fits; one with its own maximum is refused, saying what it asked for.
func TestAdmitFitsTheOutput(t *testing.T) {
	t.Parallel()
	svc, _, _, _ := newService(t)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "S", Email: "s@example.com", Limits: quota.Limits{"tokens": {{Limit: 1000}}}})
	if err != nil {
		t.Fatal(err)
	}
	body := `{"model":"m","messages":[{"role":"user","content":"hello"}]}`
	p := plan(t, quota.Route{}, quota.APIChat, body)
	ticket, err := svc.Admit(ctx, u, p)
	if err != nil {
		t.Fatalf("a 1,000-token tenant's first request: %v", err)
	}
	_, n, ok := p.OutputMax()
	in := amountOf(p.Uses(), quota.ResourceInputTokens)
	if !ok || in+n != 1000 {
		t.Fatalf("output maximum %d with a prompt bound of %d: want them to fill the 1000 left", n, in)
	}
	if _, err := ticket.End(ctx, quota.Outcome{Status: 200, Reported: llmusage.Usage{InputTokens: 5, OutputTokens: 10, Found: true}}); err != nil {
		t.Fatal(err)
	}
	_, err = svc.Admit(ctx, u, plan(t, quota.Route{}, quota.APIChat, strings.TrimSuffix(body, "}")+`,"max_tokens":2000}`))
	var le *quota.LimitError
	if !errors.As(err, &le) || le.Need <= 2000 || le.State.Used != 15 || !strings.Contains(le.Request, "max_tokens 2000") {
		t.Fatalf("a maximum that does not fit: %+v need %d %q %v", le.State, le.Need, le.Request, err)
	}
}

// fakeTokens is a stand-in tokenizer at its most prolific: one token per
// byte of every string in the body (binary payloads aside), four template
// tokens per message, three to prime the reply, and 1,000 per image.
func fakeTokens(body []byte) int64 {
	var doc map[string]any
	if json.Unmarshal(body, &doc) != nil {
		return 0
	}
	var n int64
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case string:
			n += int64(len(v))
		case []any:
			for _, e := range v {
				walk(e)
			}
		case map[string]any:
			if v["type"] == "image_url" {
				n += 1000
				return
			}
			for k, e := range v {
				if k != "image_url" {
					walk(e)
				}
			}
		}
	}
	for k, v := range doc {
		switch k {
		case "messages", "input", "system", "instructions", "prompt", "tools":
			walk(v)
			if a, ok := v.([]any); ok {
				n += 4 * int64(len(a))
			}
		}
	}
	return n + 3
}

// FuzzPlan: whatever the body, a strict reservation is never negative,
// never below what the fake tokenizer counts, and every amount is bounded.
func FuzzPlan(f *testing.F) {
	for _, s := range []string{
		`{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":20}`,
		`{"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"data:x"}}]}]}`,
		`{"input":"` + strings.Repeat("é", 50) + `","max_output_tokens":1125899906842624}`,
		`{"tools":[{"type":"function","function":{"name":"f","parameters":{}}}],"messages":[]}`,
		`{}`, `[]`, `"x"`, `{"max_tokens":9223372036854775807}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := llmusage.ParseRequest(body)
		if err != nil {
			return // refused with a 400
		}
		p := (&quota.Route{}).Plan(quota.MeterUses{}, quota.TokenRequest{API: quota.APIChat, Body: r, Size: int64(len(body))})
		uses := p.Uses()
		for _, u := range uses {
			if u.Amount < 0 || u.Amount > quota.MaxLimit {
				t.Fatalf("amount out of range: %+v", u)
			}
		}
		in := amountOf(uses, quota.ResourceInputTokens)
		if want := fakeTokens(body); in < want && bytes.HasPrefix(bytes.TrimSpace(body), []byte("{")) {
			t.Fatalf("input reservation %d below the fake tokenizer's %d for %s", in, want, body)
		}
		if out := amountOf(uses, quota.ResourceOutputTokens); out < 1 {
			t.Fatalf("output reservation %d", out)
		}
	})
}

// downOnce fails its first Admit as a store that did not answer, after
// applying it (the admission landed, the answer was lost).
type downOnce struct {
	quota.Store
	failed atomic.Bool
}

func (d *downOnce) Admit(ctx context.Context, userID, requestID string, charges []quota.Charge) (*quota.Admission, error) {
	adm, err := d.Store.Admit(ctx, userID, requestID, charges)
	if err == nil && d.failed.CompareAndSwap(false, true) {
		return nil, fmt.Errorf("timeout: %w", quota.ErrUnavailable)
	}
	return adm, err
}

// TestForcedTicketSettles: a request served although its admission's
// outcome was unknown (on_store_error allow) is counted once, and its
// settlement still replaces its reservation with what it used.
func TestForcedTicketSettles(t *testing.T) {
	t.Parallel()
	svc, cs, _, _ := newService(t)
	d := &downOnce{Store: cs.Store}
	svc2, err := quota.NewService(quota.Options{Store: d})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc2.Close() })
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "F", Email: "f@example.com", Limits: quota.Limits{"tokens": {{Limit: 100000}}}})
	if err != nil {
		t.Fatal(err)
	}
	p := plan(t, quota.Route{}, quota.APIChat, `{"messages":[{"role":"user","content":"hi"}],"max_tokens":500}`)
	ticket, err := svc2.Admit(ctx, u, p)
	if !errors.Is(err, quota.ErrUnavailable) || ticket == nil {
		t.Fatalf("admission: %v", err)
	}
	ticket.Force()
	ticket.End(ctx, quota.Outcome{Status: 200, Reported: llmusage.Usage{InputTokens: 3, OutputTokens: 4, Found: true}})
	deadline := time.Now().Add(5 * time.Second)
	for {
		usage, err := svc.Usage(ctx, u.ID)
		if err != nil {
			t.Fatal(err)
		}
		var tokens, reserved int64
		for _, it := range usage.Items {
			if it.Resource == "tokens" && it.Per == "lifetime" {
				tokens, reserved = it.Used, it.Reserved
			}
		}
		if tokens == 7 && reserved == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("tokens %d, reserved %d: want 7 and 0", tokens, reserved)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestPlanChoices: n (or best_of) completions may each use the maximum.
func TestPlanChoices(t *testing.T) {
	t.Parallel()
	p := plan(t, quota.Route{}, quota.APIChat, `{"messages":[{"role":"user","content":"hi"}],"max_tokens":100,"n":5}`)
	if out := amountOf(p.Uses(), quota.ResourceOutputTokens); out != 500 {
		t.Fatalf("n 5 × max_tokens 100 reserved %d output tokens", out)
	}
	p = plan(t, quota.Route{}, quota.APICompletions, `{"prompt":"hi","best_of":3,"n":2}`)
	_, n, _ := p.OutputMax()
	if out := amountOf(p.Uses(), quota.ResourceOutputTokens); out != 3*n {
		t.Fatalf("best_of 3 reserved %d output tokens for a maximum of %d", out, n)
	}
	for _, bad := range []string{`{"n":0}`, `{"n":129}`, `{"best_of":-1}`, `{"n":"2"}`, `{"n":1.5}`} {
		if _, err := llmusage.ParseRequest([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// TestPlanChatOutputField: the maximum can be written as
// max_completion_tokens, which OpenAI's reasoning models require.
func TestPlanChatOutputField(t *testing.T) {
	t.Parallel()
	route := quota.Route{ChatOutputField: llmusage.FieldMaxCompletionTokens}
	if field, _, _ := plan(t, route, quota.APIChat, `{"messages":[]}`).OutputMax(); field != "max_completion_tokens" {
		t.Fatalf("chat field %q", field)
	}
	if field, _, _ := plan(t, route, quota.APIMessages, `{"messages":[]}`).OutputMax(); field != "max_tokens" {
		t.Fatalf("Anthropic field %q", field)
	}
}
