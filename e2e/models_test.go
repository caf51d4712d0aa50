package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
)

const groupsOpts = "model_group premium gpt-4o o1*\n\t\tmodel_group small gpt-4o-mini claude-haiku-*\n\t\tmodel_group pro o3-pro*"
const groupPrices = "credits tokens.premium 10 per 100\n\t\t\tcredits tokens.small 1 per 100"

func chatBody(model string, maxTokens int) map[string]any {
	return map[string]any{"model": model, "max_tokens": maxTokens, "messages": []any{map[string]any{"role": "user", "content": "hi"}}}
}

// TestModelGroups: a premium request settles the premium group's counters
// and spends credits at the premium price; a small one does not touch
// them; a model whose group the plan excludes gets 403 model_not_allowed
// and reaches no backend; limits name only defined groups; usage?by=model
// breaks the use down. On both stores.
func TestModelGroups(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be := newHonestBackend(t)
			g := startGatewayWith(t, st.opts(t)+"\n\t\t"+groupsOpts, "", groupPrices, strings.TrimPrefix(be.URL, "http://"))
			c := g.tenant(t, map[string]any{"name": "G", "email": "groups@example.com", "credits": 1000,
				"limits": map[string]any{"tokens.premium": 5000, "tokens.pro": 0}})
			uid, tok := c.User.ID, c.Token.Token
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", tok, chatBody("gpt-4o", 50), nil), http.StatusOK)
			lt := g.lifetime(t, uid)
			premium := lt["tokens.premium"].Used
			if premium <= 50 || lt["tokens"].Used != premium || lt["output_tokens.premium"].Used != 50 || lt["tokens.small"].Used != 0 {
				t.Fatalf("after a premium request: %+v", lt)
			}
			if spent := lt["credits"].Used; spent != (premium*10+99)/100 { // 10 credits per 100, rounded up
				t.Fatalf("credits spent %d for %d premium tokens", spent, premium)
			}
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", tok, chatBody("gpt-4o-mini", 30), nil), http.StatusOK)
			lt = g.lifetime(t, uid)
			if lt["tokens.premium"].Used != premium || lt["output_tokens.small"].Used != 30 || lt["tokens"].Used != premium+lt["tokens.small"].Used {
				t.Fatalf("after a small request: %+v", lt)
			}
			before := be.hits.Load()
			var e openAIErr
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", tok, chatBody("o3-pro-2025", 10), &e), http.StatusForbidden)
			if e.Error.Code != "model_not_allowed" || !strings.Contains(e.Error.Message, "o3-pro-2025") || !strings.Contains(e.Error.Message, "pro") || be.hits.Load() != before {
				t.Fatalf("a model outside the plan: %+v (reached the backend: %v)", e.Error, be.hits.Load() != before)
			}
			if g.lifetime(t, uid)["tokens"].Used != lt["tokens"].Used {
				t.Fatal("the refused request was charged")
			}
			wantStatus(t, call(t, "PATCH", g.url+"/quota/users/"+uid+"/limits", adminKey, map[string]any{"tokens.premum": 10}, nil), http.StatusBadRequest)
			var by struct {
				Models map[string][]struct {
					Resource, Per string
					Used          int64
				} `json:"models"`
			}
			wantStatus(t, call(t, "GET", g.url+"/quota/users/"+uid+"/usage?by=model", adminKey, nil, &by), http.StatusOK)
			if len(by.Models["premium"]) == 0 || len(by.Models["small"]) == 0 {
				t.Fatalf("usage by model: %+v", by.Models)
			}
		})
	}
}

// TestModelGroupCapConcurrent: 200 concurrent premium requests against
// tokens.premium = 5000, over two gateways sharing Redis, never exceed it.
func TestModelGroupCapConcurrent(t *testing.T) {
	t.Parallel()
	be := newHonestBackend(t)
	opts := "redis redis://" + redistest.Start(t).Addr() + "/0\n\t\t" + groupsOpts
	a := startGateway(t, opts, strings.TrimPrefix(be.URL, "http://"))
	b := startGateway(t, opts, strings.TrimPrefix(be.URL, "http://"))
	c := a.tenant(t, map[string]any{"name": "C", "email": "groupcap@example.com", "limits": map[string]any{"tokens.premium": 5000}})
	body, _ := json.Marshal(chatBody("gpt-4o", 100))
	counts := burst(200, func(i int) *http.Request {
		g := a
		if i%2 == 1 {
			g = b
		}
		return tenantRequest(g.url+"/v1/chat/completions", c.Token.Token, string(body))
	})
	used := a.lifetime(t, c.User.ID)["tokens.premium"]
	t.Logf("answers %v, tokens.premium %+v", counts, used)
	if used.Used > 5000 || used.Reserved != 0 || counts[http.StatusOK] == 0 || counts[http.StatusOK]+counts[http.StatusTooManyRequests] != 200 {
		t.Fatalf("answers %v, tokens.premium %+v (cap 5000)", counts, used)
	}
}

// TestOpenAIClientModelOutsidePlan: the official OpenAI client naming a
// model outside the plan gets a clean 403 that it does not retry.
func TestOpenAIClientModelOutsidePlan(t *testing.T) {
	t.Parallel()
	g := startGateway(t, groupsOpts, strings.TrimPrefix(newHonestBackend(t).URL, "http://"))
	c := g.tenant(t, map[string]any{"name": "O", "email": "outside@example.com", "limits": map[string]any{"tokens.pro": 0}})
	counting, seen := countingProxy(t, g)
	client := openai.NewClient(option.WithBaseURL(counting+"/v1/"), option.WithAPIKey(c.Token.Token), option.WithMaxRetries(3))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "o3-pro", Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hi")},
	})
	var apiErr *openai.Error
	if !errors.As(err, &apiErr) || apiErr.StatusCode != http.StatusForbidden || apiErr.Code != "model_not_allowed" {
		t.Fatalf("a model outside the plan: %v", err)
	}
	if seen.Load() != 1 {
		t.Fatalf("sent %d times", seen.Load())
	}
}

// TestUnmatchedModelsRefused: with unmatched_models refuse, a model in no
// group, or no model, is a 403 before the backend.
func TestUnmatchedModelsRefused(t *testing.T) {
	t.Parallel()
	be := newHonestBackend(t)
	g := startGateway(t, groupsOpts+"\n\t\tunmatched_models refuse", strings.TrimPrefix(be.URL, "http://"))
	c := g.tenant(t, map[string]any{"name": "U", "email": "unmatched@example.com"})
	wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", c.Token.Token, chatBody("gpt-4o", 5), nil), http.StatusOK)
	before := be.hits.Load()
	for _, body := range []map[string]any{chatBody("llama-3", 5), {"max_tokens": 5}} {
		var e openAIErr
		wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", c.Token.Token, body, &e), http.StatusForbidden)
		if e.Error.Code != "model_not_allowed" {
			t.Fatalf("%+v", e.Error)
		}
	}
	if be.hits.Load() != before {
		t.Fatal("a refused model reached the backend")
	}
}
