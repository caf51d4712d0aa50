package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
	"github.com/tenantquota/caddy-tenant-quota/internal/strictjson"
)

// The randomized fault test: gateways on one Redis (and one on the
// embedded store) in front of a literal backend, driven by a seeded mix of
// tenant requests of every kind, admin operations between rounds, and
// faults during them. The oracle is the backend's own record, never our
// counters: per tenant, what it served since the last reset stays within
// the cap in force; what it served is never more than the gateway counted;
// nothing stays reserved once every request has ended; no secret reaches a
// log line; no 5xx, transport error or ERROR log line outside a fault.
//
// TQ_TORTURE_SEED reproduces a run (its seed is logged); TQ_TORTURE_ROUNDS
// sets its length (`make torture` runs many; `make test` a few).

// tortureBackend reads a request as a literal backend does: only its own
// API's output field, the first of duplicate keys, unknown fields ignored;
// it spends all the output it may (unboundedSpend when it reads no
// maximum), and records what it served by tenant (X-Tenant-ID).
type tortureBackend struct {
	*httptest.Server
	mu     sync.Mutex
	served map[string]*servedCount
}

type servedCount struct {
	messages, tokens int64
	credits          int64 // the least the gateway's prices make it cost
	convs            map[string]bool
}

const unboundedSpend = 100_000

func newTortureBackend(t *testing.T) *tortureBackend {
	b := &tortureBackend{served: map[string]*servedCount{}}
	b.Server = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(b.Close)
	return b
}

func (b *tortureBackend) count(tenant string) *servedCount {
	c := b.served[tenant]
	if c == nil {
		c = &servedCount{convs: map[string]bool{}}
		b.served[tenant] = c
	}
	return c
}

func (b *tortureBackend) snapshot() map[string]servedCount {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := map[string]servedCount{}
	for k, v := range b.served {
		out[k] = servedCount{messages: v.messages, tokens: v.tokens, credits: v.credits, convs: maps(v.convs)}
	}
	return out
}

func maps(m map[string]bool) map[string]bool {
	out := make(map[string]bool, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (b *tortureBackend) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	tenant := r.Header.Get("X-Tenant-ID")
	path := strings.ToLower(strings.TrimRight(r.URL.Path, "/"))
	var api, own string
	switch {
	case strings.HasSuffix(path, "/chat/completions"):
		api, own = "chat", "max_tokens"
	case strings.HasSuffix(path, "/completions"):
		api, own = "completions", "max_tokens"
	case strings.HasSuffix(path, "/responses"):
		api, own = "responses", "max_output_tokens"
	case strings.HasSuffix(path, "/messages"):
		api, own = "messages", "max_tokens"
	}
	out := int64(0)
	if api != "" {
		out = unboundedSpend
		if v, ok := first(body, own); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n >= 0 {
				out = n
			}
		}
		if v, ok := first(body, "n"); ok && api == "chat" {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && n > 1 {
				out *= n
			}
		}
	}
	in := int64(0)
	if api != "" {
		in = 1
	}
	b.mu.Lock()
	c := b.count(tenant)
	c.messages++
	c.credits += 2 // credits messages 2
	if conv := r.Header.Get("X-Conversation-ID"); conv != "" && path == "/v1/chat/completions" {
		c.convs[conv] = true
	}
	b.mu.Unlock()
	if r.Header.Get("X-Torture-Slow") != "" {
		// The client hangs up before the answer: nothing is generated.
		select {
		case <-r.Context().Done():
			return
		case <-time.After(300 * time.Millisecond):
		}
		if r.Context().Err() != nil {
			return
		}
	}
	b.mu.Lock()
	c = b.count(tenant)
	c.tokens += in + out
	c.credits += (in + out + 999) / 1000 // credits tokens 1 per 1000, rounded up per request
	b.mu.Unlock()
	stream, _ := first(body, "stream")
	if stream == "true" && api == "chat" {
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, `data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}`+"\n\n")
		fmt.Fprintf(w, `data: {"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}`+"\n\n", in, out)
		io.WriteString(w, "data: [DONE]\n\n")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch api {
	case "responses", "messages":
		fmt.Fprintf(w, `{"usage":{"input_tokens":%d,"output_tokens":%d}}`, in, out)
	case "":
		io.WriteString(w, `{"ok":true}`)
	default:
		fmt.Fprintf(w, `{"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}`, in, out)
	}
}

// tortureTenant is one tenant as the driver knows it: its caps in force
// and what the backend had served of it at its last reset.
type tortureTenant struct {
	id, token string
	caps      map[string]int64 // tokens, messages, conversations
	base      servedCount      // the backend's count at the last reset
	granted   int64            // the most credits granted since creation or deactivation
	spentBase servedCount      // the backend's count at the last deactivation
	disabled  bool
	secrets   []string
}

// tortureRequest is one random tenant request: its path, headers and body.
func tortureRequest(rng *rand.Rand, url, token string) (*http.Request, bool) {
	maxTok := strconv.Itoa(1 + rng.IntN(300))
	conv := "c" + strconv.Itoa(rng.IntN(6))
	type shape struct{ path, body string }
	shapes := []shape{
		{"/v1/x", `{}`},
		{"/v1/x", `{"any":"thing"}`},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":` + maxTok + `}`},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}]}`},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"n":2,"max_tokens":` + maxTok + `}`},
		{"/v1/chat/completions", `{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":` + maxTok + `}`},
		{"/v1/responses", `{"model":"m","input":"hi","max_output_tokens":` + maxTok + `}`},
		{"/v1/responses", `{"model":"m","input":"hi"}`},
		{"/v1/messages", `{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":` + maxTok + `}`},
		{"/v1/completions", `{"model":"m","prompt":"hi","max_tokens":` + maxTok + `}`},
		{"/v1/embeddings", `{"model":"m","input":"hi"}`},
		// Hostile: another API's field, duplicates, odd numbers and paths,
		// endpoints the gateway cannot meter.
		{"/v1/chat/completions", `{"model":"m","messages":[],"max_output_tokens":1}`},
		{"/v1/responses", `{"model":"m","input":"hi","max_tokens":1}`},
		{"/v1/chat/completions", `{"model":"m","messages":[],"max_tokens":90000,"max_tokens":5}`},
		{"/v1/chat/completions", `{"model":"m","messages":[],"max\u005ftokens":90000,"max_tokens":5}`},
		{"/v1/chat/completions", `{"model":"m","messages":[],"max_tokens":9223372036854775807}`},
		{"/v1/chat/completions", `{"model":"m","messages":[],"max_tokens":-5}`},
		{"/v1/chat/completions", `{"model":5,"messages":[]}`},
		{"/v1/Chat/Completions", `{"model":"m","messages":[],"max_output_tokens":1}`},
		{"/v1/chat/completions;x=1", `{"model":"m","messages":[]}`},
		{"/v1/chat/completions/.", `{"model":"m","messages":[]}`},
		{"/v1/responses", `{"model":"m","input":"hi","background":true,"max_output_tokens":5}`},
		{"/v1/batches", `{"input_file_id":"f"}`},
		{"/v1/threads/runs", `{"assistant_id":"a"}`},
		{"/v1/chat/completions", `not json`},
	}
	s := shapes[rng.IntN(len(shapes))]
	req, _ := http.NewRequest("POST", url+s.path, strings.NewReader(s.body))
	switch rng.IntN(4) { // the token in any of its headers
	case 0:
		req.Header.Set("x-api-key", token)
	case 1:
		req.Header.Set("api-key", token)
	default:
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if rng.IntN(3) > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-Conversation-ID", conv)
	hangUp := rng.IntN(12) == 0
	if hangUp {
		req.Header.Set("X-Torture-Slow", "1")
	}
	return req, hangUp
}

func tortureRounds(t *testing.T) (seed uint64, rounds int) {
	seed = uint64(time.Now().UnixNano())
	if v := os.Getenv("TQ_TORTURE_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("TQ_TORTURE_SEED: %v", err)
		}
		seed = s
	}
	rounds = 3
	if v := os.Getenv("TQ_TORTURE_ROUNDS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("TQ_TORTURE_ROUNDS: %q", v)
		}
		rounds = n
	}
	return seed, rounds
}

func TestTorture(t *testing.T) {
	t.Parallel()
	seed, rounds := tortureRounds(t)
	t.Logf("seed %d, %d rounds (TQ_TORTURE_SEED=%d TQ_TORTURE_ROUNDS=%d reproduces)", seed, rounds, seed, rounds)
	t.Run("redis", func(t *testing.T) { torture(t, seed, rounds, true) })
	t.Run("embedded", func(t *testing.T) { torture(t, seed+1, rounds, false) })
}

func torture(t *testing.T, seed uint64, rounds int, onRedis bool) {
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	be := newTortureBackend(t)
	var srv *redistest.Server
	opts := ""
	if onRedis {
		srv = redistest.StartAOF(t)
		opts = "redis redis://" + srv.Addr() + "/0"
	}
	// The access log on stdout, filtered as the README says: Caddy itself
	// redacts only Authorization.
	site := "@chat path /v1/chat/completions\n\tlog {\n\t\toutput stdout\n\t\tformat filter {\n\t\t\trequest>headers>X-Api-Key delete\n\t\t\trequest>headers>Api-Key delete\n\t\t}\n\t}"
	// Every request is priced too: 2 credits a message, 1 per 1,000 tokens.
	handler := "meter conversations @chat key {header.X-Conversation-ID}\n\t\t\tdefault_max_tokens 256\n\t\t\treservation_ttl 3s\n\t\t\tcredits messages 2\n\t\t\tcredits tokens 1 per 1000"
	gws := []*gateway{startGatewayWith(t, opts, site, handler, strings.TrimPrefix(be.URL, "http://"))}
	if onRedis {
		gws = append(gws, startGatewayWith(t, opts, site, handler, strings.TrimPrefix(be.URL, "http://")))
	}
	admin := gws[0]
	newTenant := func(i int) *tortureTenant {
		caps := map[string]int64{"tokens": 1500 + int64(rng.IntN(4000)), "messages": 100 + int64(rng.IntN(300)), "conversations": 1 + int64(rng.IntN(4))}
		if i == 0 {
			caps["messages"] = 3000 // a busy tenant far from its cap: served from slices
		}
		credits := 100 + int64(rng.IntN(500))
		if i == 0 {
			credits = 1 << 40
		}
		created := admin.tenant(t, map[string]any{"name": "T", "email": fmt.Sprintf("t%d-%d@example.com", i, rng.Uint32()), "limits": limitsOf(caps), "credits": credits})
		return &tortureTenant{id: created.User.ID, token: created.Token.Token, caps: caps, granted: credits, secrets: []string{created.Token.Token}}
	}
	tenants := []*tortureTenant{newTenant(0), newTenant(1), newTenant(2)}
	var secrets []string
	killed := false
	for round := 0; round < rounds; round++ {
		fault := "none"
		if round > 0 {
			faults := []string{"none", "reload"}
			if onRedis {
				faults = append(faults, "kill-gateway", "pause-redis", "kill-redis")
			} else {
				faults = append(faults, "restart-gateway")
			}
			fault = faults[rng.IntN(len(faults))]
		}
		before := be.snapshot()
		logAt := make([]int, len(gws))
		for i, g := range gws {
			logAt[i] = len(g.logs.String())
		}
		statuses := tortureTraffic(t, rng, gws, tenants, fault, srv, &killed)
		time.Sleep(300 * time.Millisecond) // settlements after the last byte
		after := be.snapshot()
		t.Logf("round %d, fault %s: statuses %v", round, fault, statuses)
		if fault == "none" {
			for st, n := range statuses {
				if st == 0 || st >= 500 {
					t.Errorf("round %d (no fault): %d answers with status %d", round, n, st)
				}
			}
			for i, g := range gws {
				for _, line := range strings.Split(g.logs.String()[logAt[i]:], "\n") {
					if strings.Contains(line, `"level":"error"`) {
						t.Errorf("round %d (no fault): gateway %d logged an ERROR: %s", round, i, line)
					}
				}
			}
		}
		for _, tn := range tenants {
			checkTenant(t, round, admin, tn, before[tn.id], after[tn.id])
		}
		if t.Failed() {
			t.Fatalf("the seed reproduces this run")
		}
		// Admin operations between rounds.
		for i, tn := range tenants {
			switch rng.IntN(8) {
			case 0: // new caps, maybe under what is used
				for r := range tn.caps {
					tn.caps[r] = int64(rng.IntN(3000))
				}
				wantStatus(t, call(t, "PUT", admin.url+"/quota/users/"+tn.id+"/limits", adminKey, limitsOf(tn.caps), nil), http.StatusOK)
			case 1:
				wantStatus(t, call(t, "POST", admin.url+"/quota/users/"+tn.id+"/usage/reset", adminKey, map[string]any{}, nil), http.StatusOK)
				tn.base = be.snapshot()[tn.id]
			case 2:
				status := "disabled"
				if tn.disabled {
					status = "active"
				}
				tn.disabled = !tn.disabled
				if tn.disabled { // a deactivated account keeps no balance
					tn.granted, tn.spentBase = 0, be.snapshot()[tn.id]
				}
				wantStatus(t, call(t, "PATCH", admin.url+"/quota/users/"+tn.id, adminKey, map[string]any{"status": status}, nil), http.StatusOK)
			case 3: // revoke the token, issue another
				var toks struct {
					Items []struct{ ID string } `json:"items"`
				}
				wantStatus(t, call(t, "GET", admin.url+"/quota/users/"+tn.id+"/tokens", adminKey, nil, &toks), http.StatusOK)
				for _, tk := range toks.Items {
					wantStatus(t, call(t, "DELETE", admin.url+"/quota/users/"+tn.id+"/tokens/"+tk.ID, adminKey, nil, nil), http.StatusNoContent)
				}
				var issued struct{ Token string }
				wantStatus(t, call(t, "POST", admin.url+"/quota/users/"+tn.id+"/tokens", adminKey, map[string]any{}, &issued), http.StatusCreated)
				tn.token = issued.Token
				tn.secrets = append(tn.secrets, issued.Token)
			case 5: // a top-up
				var topped struct {
					Credits int64 `json:"credits"`
				}
				wantStatus(t, call(t, "POST", admin.url+"/quota/users/"+tn.id+"/credits", adminKey, map[string]any{"amount": 100 + rng.IntN(800)}, &topped), http.StatusOK)
				tn.granted = max(tn.granted, topped.Credits)
			case 4:
				wantStatus(t, call(t, "DELETE", admin.url+"/quota/users/"+tn.id, adminKey, nil, nil), http.StatusNoContent)
				secrets = append(secrets, tn.secrets...)
				tenants[i] = newTenant(i)
			}
		}
		time.Sleep(100 * time.Millisecond) // the changes reach every node (pub/sub)
	}
	// Nothing stays reserved once every request has ended: leases of
	// killed nodes end with their holds (reservations 3 s, slices 10 s).
	// A settlement journaled while Redis was paused is replayed in the
	// background once it answers, and a reservation whose outcome stayed
	// unknown ends with its hold (3 s): poll, within the longest hold and
	// a margin for a loaded machine.
	wait := 8 * time.Second
	if killed {
		wait += 11 * time.Second
	}
	end := time.Now().Add(wait)
	for _, tn := range tenants {
		deadline := end
		for {
			if !tn.disabled {
				resp, err := client.Do(tenantRequest(admin.url+"/v1/x", tn.token, `{}`)) // sweeps
				if err == nil {
					resp.Body.Close()
				}
			}
			var left []string
			for res, it := range admin.lifetime(t, tn.id) {
				if it.Reserved != 0 || it.Used < 0 {
					left = append(left, fmt.Sprintf("%s used %d, %d still reserved", res, it.Used, it.Reserved))
				}
			}
			if len(left) == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("tenant %s, after every request ended and the holds: %s", tn.id, strings.Join(left, "; "))
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		secrets = append(secrets, tn.secrets...)
	}
	for i, g := range gws {
		logs := g.logs.String()
		for _, s := range append(secrets, adminKey) {
			if strings.Contains(logs, s) {
				t.Errorf("gateway %d logged a secret (%s…)", i, s[:8])
			}
		}
	}
}

func limitsOf(caps map[string]int64) map[string]any {
	return map[string]any{
		"tokens":        []any{caps["tokens"], map[string]any{"limit": caps["tokens"] + 500, "per": "day"}},
		"messages":      caps["messages"],
		"conversations": caps["conversations"],
	}
}

// checkTenant holds the round's traffic of one tenant against the oracle:
// what the backend served since the last reset is within each cap in
// force (a cap lowered under it allows nothing more), nothing at all was
// served to a disabled tenant, and the gateway counted at least what the
// backend served.
func checkTenant(t *testing.T, round int, g *gateway, tn *tortureTenant, before, after servedCount) {
	t.Helper()
	served := map[string][2]int64{ // before, after, since the reset
		"tokens":        {before.tokens - tn.base.tokens, after.tokens - tn.base.tokens},
		"messages":      {before.messages - tn.base.messages, after.messages - tn.base.messages},
		"conversations": {newConvs(tn.base.convs, before.convs), newConvs(tn.base.convs, after.convs)},
	}
	for res, s := range served {
		inRound := s[1] - s[0]
		if tn.disabled && inRound > 0 {
			t.Errorf("round %d: a disabled tenant was served %d %s", round, inRound, res)
		}
		if allowed := max(tn.caps[res]-s[0], 0); inRound > allowed {
			t.Errorf("round %d: tenant %s was served %d %s against %d left of its cap of %d (served %d since its reset before the round)", round, tn.id, inRound, res, allowed, tn.caps[res], s[0])
		}
	}
	// Credits spent go down only when the account is deactivated (its
	// balance goes; a reset keeps them) and every admission fits what is
	// granted at its moment, so what the backend served since costs at
	// most the most granted since (the backend prices each request it
	// served as the gateway does: 2 a message, 1 per 1,000 tokens rounded
	// up; a hang-up costs at least its message).
	msgs, toks := after.messages-tn.spentBase.messages, after.tokens-tn.spentBase.tokens
	cost := after.credits - tn.spentBase.credits
	if cost > tn.granted {
		t.Errorf("round %d: tenant %s was served %d messages and %d tokens, %d credits' worth, against %d granted", round, tn.id, msgs, toks, cost, tn.granted)
	}
	counted := g.lifetime(t, tn.id)
	if c := counted["credits"].Used; c < cost {
		t.Errorf("round %d: tenant %s: the backend served %d messages and %d tokens, %d credits' worth, the gateway counted %d spent", round, tn.id, msgs, toks, cost, c)
	}
	for _, res := range []string{"tokens", "messages"} {
		if c := counted[res].Used; c < served[res][1] {
			t.Errorf("round %d: tenant %s: the backend served %d %s since the reset, the gateway counted %d", round, tn.id, served[res][1], res, c)
		}
	}
}

func newConvs(base, now map[string]bool) int64 {
	var n int64
	for c := range now {
		if !base[c] {
			n++
		}
	}
	return n
}

// tortureTraffic sends one round of random requests from 8 workers to the
// gateways, injecting fault a third of the way in, and counts the answers
// by status (0: a transport error; hang-ups are not counted).
func tortureTraffic(t *testing.T, rng *rand.Rand, gws []*gateway, tenants []*tortureTenant, fault string, srv *redistest.Server, killed *bool) map[int]int {
	const workers, each = 8, 30
	type job struct {
		req    *http.Request
		hangUp bool
	}
	jobs := make([][]job, workers)
	for w := range jobs {
		for range each {
			tn := tenants[rng.IntN(len(tenants))]
			g := gws[rng.IntN(len(gws))]
			req, hang := tortureRequest(rng, g.url, tn.token)
			jobs[w] = append(jobs[w], job{req, hang})
		}
	}
	var mu sync.Mutex
	statuses := map[int]int{}
	var wg sync.WaitGroup
	var sent sync.WaitGroup
	sent.Add(1)
	var once sync.Once
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			for i, j := range jobs[w] {
				if i == each/3 {
					once.Do(sent.Done)
				}
				if j.hangUp {
					ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
					if resp, err := c.Do(j.req.WithContext(ctx)); err == nil {
						resp.Body.Close()
					}
					cancel()
					continue
				}
				status := 0
				if resp, err := c.Do(j.req); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					status = resp.StatusCode
				}
				mu.Lock()
				statuses[status]++
				mu.Unlock()
			}
		}()
	}
	sent.Wait()
	var heal func()
	switch fault {
	case "reload":
		g := gws[rng.IntN(len(gws))]
		data, err := os.ReadFile(g.caddyfile)
		if err != nil {
			t.Fatal(err)
		}
		req, _ := http.NewRequest("POST", "http://"+g.adminAddr+"/load", bytes.NewReader(data))
		req.Header.Set("Content-Type", "text/caddyfile")
		req.Header.Set("Cache-Control", "must-revalidate") // reload even if unchanged
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
		}
	case "kill-gateway":
		g := gws[len(gws)-1]
		g.kill()
		*killed = true
		heal = func() { g.start(t, g.caddyfile) }
	case "restart-gateway":
		g := gws[0]
		heal = func() {}
		g.stop(t)
		g.start(t, g.caddyfile)
	case "pause-redis":
		srv.Pause(t)
		time.Sleep(400 * time.Millisecond)
		srv.Resume(t)
	case "kill-redis":
		srv.Kill(t)
		time.Sleep(200 * time.Millisecond)
		srv.Restart(t)
	}
	wg.Wait()
	if heal != nil {
		heal()
	}
	if fault == "kill-redis" || fault == "pause-redis" {
		time.Sleep(1500 * time.Millisecond) // the journal replays, the breaker closes
	}
	return statuses
}

// first is a top-level field as a backend that keeps the first of
// duplicate keys reads it.
func first(body []byte, key string) (string, bool) {
	v, ok := strictjson.First(body, key)
	return string(v), ok
}
