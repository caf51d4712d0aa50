package quota_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/tenantquota/caddy-tenant-quota/quota"
)

// fieldOf returns the first field a validation error names ("" if err is
// not one).
func fieldOf(err error) string {
	var ve *quota.ValidationError
	if !errors.As(err, &ve) || len(ve.Fields) == 0 {
		return ""
	}
	return ve.Fields[0].Field
}

// TestFreeText: the names of users and tokens refuse what emails and
// external ids refuse (invalid UTF-8, control, format and line-separator
// characters), also from Go callers that no JSON decoder cleans up.
func TestFreeText(t *testing.T) {
	t.Parallel()
	svc, _, _, _ := newService(t)
	ctx := context.Background()
	u, err := svc.CreateUser(ctx, quota.NewUser{Name: "Zoë 李", Email: "ok@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, s string }{
		{"invalid UTF-8", "a\xffb"},
		{"NUL", "a\x00b"},
		{"CR LF", "a\r\nb"},
		{"tab", "a\tb"},
		{"DEL", "a\x7fb"},
		{"C1", "a\u0085b"},
		{"RLO", "a\u202eb"},
		{"LRI", "a\u2066b"},
		{"ZWSP", "a\u200bb"},
		{"BOM", "\ufeffa"},
		{"LS", "a\u2028b"},
		{"PS", "a\u2029b"},
		{"leading ZWJ", "\u200da"},
		{"trailing ZWNJ", "a\u200c"},
		{"two joiners", "a\u200d\u200db"},
		{"joiner and invalid UTF-8", "a\u200db\xff"},
		{"ZWJ between Latin letters", "ad\u200dmin"},
		{"ZWNJ between Latin letters", "a\u200c-corp"},
		{"ZWNJ before an emoji", "a\u200c👩"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := svc.CreateUser(ctx, quota.NewUser{Name: tt.s, Email: "x@example.com"}); fieldOf(err) != "name" {
				t.Errorf("CreateUser name: %v", err)
			}
			if _, err := svc.UpdateUser(ctx, u.ID, quota.UserPatch{Name: &tt.s}); fieldOf(err) != "name" {
				t.Errorf("UpdateUser name: %v", err)
			}
			if _, err := svc.CreateToken(ctx, u.ID, quota.NewToken{Name: tt.s}); fieldOf(err) != "name" {
				t.Errorf("CreateToken name: %v", err)
			}
			if _, err := svc.CreateUser(ctx, quota.NewUser{Name: "X", Email: "x@example.com", ExternalID: tt.s}); fieldOf(err) != "externalId" {
				t.Errorf("CreateUser externalId: %v", err)
			}
			if err := quota.ValidateResource("chatbots/"+tt.s, true); err == nil {
				t.Errorf("ValidateResource accepted %q", "chatbots/"+tt.s)
			}
		})
	}
	if _, err := svc.CreateToken(ctx, u.ID, quota.NewToken{Name: "déploiement 🚀"}); err != nil {
		t.Fatalf("an ordinary token name: %v", err)
	}
	// Joiners between two characters write real names: emoji sequences
	// and Persian (ZWNJ).
	for _, name := range []string{"👩\u200d💻 team", "می\u200cخواهم", "👩🏽\u200d💻", "❤\ufe0f\u200d🔥"} {
		if _, err := svc.CreateUser(ctx, quota.NewUser{Name: name, Email: "j" + strconv.Itoa(len(name)) + "@example.com"}); err != nil {
			t.Errorf("name %q: %v", name, err)
		}
		if _, err := svc.CreateToken(ctx, u.ID, quota.NewToken{Name: name}); err != nil {
			t.Errorf("token name %q: %v", name, err)
		}
	}
	// Joiners count towards the length.
	long := strings.Repeat("👩\u200d", 100) + "💻"
	if _, err := svc.CreateToken(ctx, u.ID, quota.NewToken{Name: long}); fieldOf(err) != "name" {
		t.Errorf("a name of %d characters with joiners: %v", len([]rune(long)), err)
	}
	if err := quota.ValidateResource("chatbots/café", false); err != nil {
		t.Fatalf("an ordinary resource id: %v", err)
	}
	if err := quota.ValidateResource("chatbots/a\u00a0b", false); err == nil {
		t.Fatal("a no-break space in a resource id was accepted")
	}
}
