package quota_test

import (
	"strings"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// readmeGroups are the README's example groups.
var readmeGroups = quota.ModelGroups{
	{Name: "small", Patterns: []string{"gpt-4o-mini*", "claude-haiku-*", "claude-3-5-haiku-*"}},
	{Name: "premium", Patterns: []string{"gpt-4o*", "chatgpt-4o-*", "o1*", "claude-opus-*", "claude-sonnet-*", "claude-3-opus-*", "claude-3-5-sonnet-*", "claude-3-7-sonnet-*"}},
}

// TestModelRefusal: a model is matched to its group without regard to
// case or surrounding white space, so spelling it another way does not
// escape a plan's 0; once groups are defined a model in no group is
// refused unless the operator allows unmatched models, and a route priced
// per group refuses it whatever the policy (it would be free).
func TestModelRefusal(t *testing.T) {
	t.Parallel()
	noPremium := &quota.User{Limits: quota.Limits{"tokens.premium": {{Limit: 0}}}}
	open := &quota.User{}
	groupPriced := []quota.CreditRate{{Resource: "tokens.premium", Credits: 10, Per: 1000}, {Resource: "tokens.small", Credits: 1, Per: 1000}}
	for _, tt := range []struct {
		name    string
		route   quota.Route
		user    *quota.User
		body    string
		group   string
		refused string // a part of the refusal, "" when served
	}{
		{"premium refused", quota.Route{ModelGroups: readmeGroups}, noPremium, `{"model":"gpt-4o"}`, "premium", "not included in your plan"},
		{"dated snapshot", quota.Route{ModelGroups: readmeGroups}, noPremium, `{"model":"gpt-4o-2024-08-06"}`, "premium", "not included"},
		{"latest alias", quota.Route{ModelGroups: readmeGroups}, noPremium, `{"model":"chatgpt-4o-latest"}`, "premium", "not included"},
		{"upper case", quota.Route{ModelGroups: readmeGroups}, noPremium, `{"model":"GPT-4o"}`, "premium", "not included"},
		{"white space", quota.Route{ModelGroups: readmeGroups}, noPremium, `{"model":" gpt-4o\t"}`, "premium", "not included"},
		{"claude capitals", quota.Route{ModelGroups: readmeGroups}, noPremium, `{"model":"Claude-Opus-4"}`, "premium", "not included"},
		{"small served", quota.Route{ModelGroups: readmeGroups}, noPremium, `{"model":"GPT-4o-mini-2024-07-18"}`, "small", ""},
		{"unmatched refused by default", quota.Route{ModelGroups: readmeGroups}, open, `{"model":"llama-3-70b"}`, "", "not offered here"},
		{"no model refused by default", quota.Route{ModelGroups: readmeGroups}, open, `{"messages":[]}`, "", "names no model"},
		{"unmatched allowed", quota.Route{ModelGroups: readmeGroups, UnmatchedModels: quota.UnmatchedAllow}, open, `{"model":"llama-3-70b"}`, "", ""},
		{"unmatched on a group-priced route", quota.Route{ModelGroups: readmeGroups, UnmatchedModels: quota.UnmatchedAllow, Credits: groupPriced}, open, `{"model":"llama-3-70b"}`, "", "not offered here"},
		{"no groups: anything", quota.Route{}, open, `{"model":"llama-3-70b"}`, "", ""},
		{"no groups, refuse", quota.Route{UnmatchedModels: quota.UnmatchedRefuse}, open, `{"model":"llama-3-70b"}`, "", "not offered"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := plan(t, tt.route, quota.APIChat, tt.body)
			if _, g := p.Model(); g != tt.group {
				t.Fatalf("group %q, want %q", g, tt.group)
			}
			got := p.ModelRefusal(tt.user)
			if (tt.refused == "") != (got == "") || !strings.Contains(got, tt.refused) {
				t.Fatalf("refusal %q, want one saying %q", got, tt.refused)
			}
		})
	}
	if p := (&quota.Route{ModelGroups: readmeGroups}).Plan(quota.MeterUses{}, quota.TokenRequest{}); p.ModelRefusal(noPremium) != "" {
		t.Fatal("a request that meters no tokens is refused for its model")
	}
}
