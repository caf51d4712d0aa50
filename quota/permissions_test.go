package quota

import (
	"strings"
	"testing"
)

func TestPermissionMatches(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		pattern, perm string
		want          bool
	}{
		{"*", "users.read", true},
		{"users.*", "users.read", true},
		{"users.*", "users", false},
		{"users.*", "usersx.read", false},
		{"chatbots.users.*", "chatbots.users.list", true},
		{"chatbots.*", "chatbots.users.list", true},
		{"users.read", "users.read", true},
		{"users.read", "users.readx", false},
	} {
		if got := PermissionMatches(tt.pattern, tt.perm); got != tt.want {
			t.Errorf("PermissionMatches(%q, %q) = %v", tt.pattern, tt.perm, got)
		}
	}
	for _, bad := range []string{"", ".", "a..b", "a.*.b", "*.a", "a b", "a/b", "a.**"} {
		if ValidatePermission(bad, true) == nil {
			t.Errorf("pattern %q accepted", bad)
		}
	}
	for _, ok := range []string{"*", "a.*", "chatbots.users.list", "x-y_z.A1"} {
		if err := ValidatePermission(ok, true); err != nil {
			t.Errorf("pattern %q: %v", ok, err)
		}
	}
	if ValidatePermission("a.*", false) == nil || ValidatePermission("*", false) == nil {
		t.Error("a pattern accepted as a permission")
	}
}

// FuzzPermission: whatever the input, validation never panics, a valid
// pattern matches itself when it is a plain name, and "*" matches
// everything valid.
func FuzzPermission(f *testing.F) {
	for _, s := range []string{"*", "a.*", "users.read", "a..b", "chatbots.users.*"} {
		f.Add(s, "users.read")
	}
	f.Fuzz(func(t *testing.T, pattern, perm string) {
		pErr := ValidatePermission(pattern, true)
		nErr := ValidatePermission(perm, false)
		if nErr == nil && !PermissionMatches("*", perm) {
			t.Fatalf("* does not match %q", perm)
		}
		if pErr == nil && ValidatePermission(pattern, false) == nil && !PermissionMatches(pattern, pattern) {
			t.Fatalf("%q does not match itself", pattern)
		}
		if nErr == nil && pErr == nil && PermissionMatches(pattern, perm) && pattern != "*" && pattern != perm {
			prefix := pattern[:len(pattern)-1]
			if len(perm) <= len(prefix) || perm[:len(prefix)] != prefix {
				t.Fatalf("%q matched %q", pattern, perm)
			}
		}
	})
}

// FuzzResource: a resource a request names is never a pattern, covers
// itself, and is covered by "*" and by its type's wildcard.
func FuzzResource(f *testing.F) {
	for _, s := range []string{"chatbots/abc", "chatbots/*", "*", "a/b/c", "x/\u200b", "/", "t/"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, r string) {
		if ValidateResource(r, false) != nil {
			return
		}
		if r == "*" || r[len(r)-1] == '*' {
			t.Fatalf("%q accepted as a concrete resource", r)
		}
		typ := r[:strings.IndexByte(r, '/')]
		if !ResourceCovers(r, r) || !ResourceCovers("*", r) || !ResourceCovers(typ+"/*", r) || ResourceCovers(typ+"x/*", r) {
			t.Fatalf("coverage of %q", r)
		}
		if ValidateResource(r, true) != nil {
			t.Fatalf("%q valid as a resource but not as a pattern", r)
		}
	})
}

func TestGlobMatch(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		pattern, name string
		want          bool
	}{
		{"gpt-4o", "gpt-4o", true}, {"gpt-4o", "gpt-4o-mini", false}, {"o1*", "o1-preview", true}, {"o1*", "o1", true},
		{"claude-*-4", "claude-opus-4", true}, {"claude-*-4", "claude-opus-4-1", false}, {"*", "", true}, {"a*b*c", "axxbyyc", true},
		{"GPT-4o", "gpt-4o", false},
	} {
		if got := GlobMatch(tt.pattern, tt.name); got != tt.want {
			t.Errorf("GlobMatch(%q, %q) = %v", tt.pattern, tt.name, got)
		}
	}
	gs := ModelGroups{{Name: "small", Patterns: []string{"gpt-4o-mini"}}, {Name: "premium", Patterns: []string{"gpt-4o*"}}}
	if gs.GroupOf("gpt-4o-mini") != "small" || gs.GroupOf("gpt-4o") != "premium" || gs.GroupOf("llama") != "" || gs.GroupOf(" GPT-4o-Mini ") != "small" {
		t.Fatal("the first matching group does not win")
	}
}

// FuzzGlobMatch: a pattern without '*' matches only itself; "*" matches
// everything; a name always matches itself with its first character
// replaced by '*'... as long as matching never panics.
func FuzzGlobMatch(f *testing.F) {
	for _, s := range []string{"gpt-4o", "o1*", "a*b*c", "*"} {
		f.Add(s, "gpt-4o-mini")
	}
	f.Fuzz(func(t *testing.T, pattern, name string) {
		if len(pattern) > 64 || strings.Count(pattern, "*") > 8 || len(name) > 256 {
			return
		}
		got := GlobMatch(pattern, name)
		if !strings.Contains(pattern, "*") && got != (pattern == name) {
			t.Fatalf("GlobMatch(%q, %q) = %v", pattern, name, got)
		}
		if !GlobMatch("*", name) || !GlobMatch(name, name) && !strings.Contains(name, "*") {
			t.Fatalf("%q does not match itself or *", name)
		}
		if len(name) > 0 && !GlobMatch("*"+name[1:], name) {
			t.Fatalf("*%q does not match %q", name[1:], name)
		}
	})
}
