package quota

import (
	"fmt"
	"strings"
)

// ModelGroup names a set of models by patterns: exact names and '*'
// globs, matched against a request's "model" without regard to case or
// surrounding white space (a backend may serve " GPT-4o" as gpt-4o).
type ModelGroup struct {
	Name     string   `json:"name"`
	Patterns []string `json:"patterns"`
}

// ModelGroups are the operator's groups, in order: the first that matches
// a model is its group.
type ModelGroups []ModelGroup

// Unmatched model policies (Route.UnmatchedModels).
const (
	UnmatchedAllow  = "allow"
	UnmatchedRefuse = "refuse"
)

// GroupOf returns the group of model, or "". The model is trimmed of
// white space and folded to lower case first, and so are the patterns.
func (gs ModelGroups) GroupOf(model string) string {
	model = strings.ToLower(strings.TrimSpace(model))
	if model == "" {
		return ""
	}
	for _, g := range gs {
		for _, p := range g.Patterns {
			if GlobMatch(strings.ToLower(p), model) {
				return g.Name
			}
		}
	}
	return ""
}

// Names lists the groups' names.
func (gs ModelGroups) Names() []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = g.Name
	}
	return out
}

// GlobMatch reports whether name matches pattern, where '*' stands for any
// run of characters (none included) and every other character for itself.
func GlobMatch(pattern, name string) bool {
	star := strings.IndexByte(pattern, '*')
	if star < 0 {
		return pattern == name
	}
	if !strings.HasPrefix(name, pattern[:star]) {
		return false
	}
	name, pattern = name[star:], pattern[star+1:]
	for {
		if GlobMatch(pattern, name) {
			return true
		}
		if name == "" {
			return false
		}
		name = name[1:]
	}
}

// ValidateModelGroups checks group names (like resource names) and
// patterns (1 to 256 printable characters, at most 8 stars).
func ValidateModelGroups(gs ModelGroups) error {
	seen := map[string]bool{}
	for _, g := range gs {
		if !groupName.MatchString(g.Name) {
			return fmt.Errorf("model_group %q: a name is 1 to 64 of a-z, 0-9, '_' and '-'", g.Name)
		}
		if seen[g.Name] {
			return fmt.Errorf("model_group %s is defined twice", g.Name)
		}
		seen[g.Name] = true
		if len(g.Patterns) == 0 {
			return fmt.Errorf("model_group %s names no model", g.Name)
		}
		for _, p := range g.Patterns {
			if p == "" || len(p) > 256 || strings.Count(p, "*") > 8 || strings.ContainsAny(p, " \t\r\n") {
				return fmt.Errorf("model_group %s: %q is not a model pattern (a name, with '*' for any run of characters)", g.Name, p)
			}
		}
	}
	return nil
}

// GroupResource names the counter of resource for a model group:
// "tokens.premium".
func GroupResource(resource, group string) string { return resource + "." + group }

// SplitGroupResource splits "tokens.premium"; ok is false for a plain
// resource.
func SplitGroupResource(name string) (resource, group string, ok bool) {
	return strings.Cut(name, ".")
}

// UsesFor returns the token uses of c, and, for a model group, the same
// counted against the group's resources.
func (c TokenCount) UsesFor(group string) []Use {
	uses := c.Uses()
	if group == "" {
		return uses
	}
	for _, u := range c.Uses() {
		u.Resource = GroupResource(u.Resource, group)
		uses = append(uses, u)
	}
	return uses
}

// ModelRefusal says why u may not use the plan's model: its group has a
// limit of 0 on one of the group's token resources; or the model is in
// no group (or the request names none) and the route refuses unmatched
// models (the default once a group is defined), or prices only groups,
// so an unmatched model would cost nothing. "" when allowed, and for a
// request that meters no tokens.
func (p *Plan) ModelRefusal(u *User) string {
	if p.tokens == nil {
		return ""
	}
	model, group := p.tokens.model, p.tokens.group
	if group != "" {
		for _, r := range []string{ResourceTokens, ResourceInputTokens, ResourceOutputTokens} {
			for _, l := range u.Limits[GroupResource(r, group)] {
				if l.Limit == 0 {
					return fmt.Sprintf("The model %s (group %s) is not included in your plan.", clip(model), group)
				}
			}
		}
		return ""
	}
	r := p.route
	refuse := r.UnmatchedModels == UnmatchedRefuse || (r.UnmatchedModels == "" && len(r.ModelGroups) > 0)
	if !refuse {
		for _, c := range r.Credits {
			if _, _, ok := SplitGroupResource(c.Resource); ok {
				refuse = true // priced per group only: an unmatched model would be free
				break
			}
		}
	}
	if !refuse {
		return ""
	}
	if strings.TrimSpace(model) == "" {
		return "This request names no model; name one of the models of your plan."
	}
	return fmt.Sprintf("The model %s is not offered here.", clip(model))
}

// clip shortens what a client sent for an error message.
func clip(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}
