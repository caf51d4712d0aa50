package admin

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenAPILint runs a standard OpenAPI linter (Redocly CLI, pinned in
// tools/openapi-lint) over the document with the project's configuration,
// tools/openapi-lint/redocly.yaml, which names every accepted exception
// and why. No errors, no warnings. It needs `npm ci` in tools/openapi-lint
// (`make lint-openapi`); without it the test is skipped, unless
// TQ_REQUIRE_LINT=1 (as `make test` sets), which makes it fail instead.
func TestOpenAPILint(t *testing.T) {
	t.Parallel()
	dir := filepath.Join("..", "tools", "openapi-lint")
	bin := filepath.Join(dir, "node_modules", ".bin", "redocly")
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("TQ_REQUIRE_LINT") == "1" {
			t.Fatalf("TQ_REQUIRE_LINT=1 but the OpenAPI linter is not installed (%v): run `make lint-openapi` or `npm ci` in tools/openapi-lint", err)
		}
		t.Skipf("the OpenAPI linter is not installed (npm ci in tools/openapi-lint, or make lint-openapi): %v", err)
	}
	cmd := exec.Command(bin, "lint", "--config", filepath.Join(dir, "redocly.yaml"), "--format", "json", "openapi.json")
	// No telemetry and no update check: the test talks to nobody.
	cmd.Env = append(os.Environ(), "REDOCLY_TELEMETRY=off", "REDOCLY_SUPPRESS_UPDATE_NOTICE=true", "NO_COLOR=1")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("running the linter: %v\n%s", err, stderr.String())
	}
	var report struct {
		Totals struct {
			Errors, Warnings, Ignored int
		}
		Problems []struct {
			RuleID, Severity, Message string
			Location                  []struct{ Pointer string }
		}
	}
	if jerr := json.Unmarshal(out, &report); jerr != nil {
		t.Fatalf("the linter's report (exit: %v): %v\n%s\n%s", err, jerr, out, stderr.String())
	}
	for _, p := range report.Problems {
		where := ""
		if len(p.Location) > 0 {
			where = p.Location[0].Pointer
		}
		t.Errorf("%s %s at %s: %s", p.Severity, p.RuleID, where, p.Message)
	}
	if report.Totals.Errors != 0 || report.Totals.Warnings != 0 || err != nil {
		t.Fatalf("the linter: %d errors, %d warnings (exit: %v)", report.Totals.Errors, report.Totals.Warnings, err)
	}
	t.Logf("the linter: no errors, no warnings (%d accepted in tools/openapi-lint)", report.Totals.Ignored)
}
