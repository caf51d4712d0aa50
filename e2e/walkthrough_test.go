package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReadmeWalkthroughAsWritten runs the README's walk-through block with
// bash, as a new operator pastes it, against Caddyfile.example as `make
// run` starts it (only its ports moved to free ones), and checks that every
// answer the README shows after "# =>" comes, in order, with "…" standing
// for what differs between runs.
func TestReadmeWalkthroughAsWritten(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	script := walkthroughBlock(t, string(readme))
	example, err := os.ReadFile(filepath.Join("..", "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	port, backend, adminPort := freePort(t), freePort(t), freePort(t)
	cfg := string(example)
	for old, repl := range map[string]string{
		"\n:8080 {":         fmt.Sprintf("\n:%d {", port),
		":9090":             fmt.Sprintf(":%d", backend),
		"{\n\ttenant_quota": fmt.Sprintf("{\n\tadmin 127.0.0.1:%d\n\ttenant_quota", adminPort),
	} {
		if !strings.Contains(cfg, old) {
			t.Fatalf("Caddyfile.example has no %q", old)
		}
		cfg = strings.ReplaceAll(cfg, old, repl)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	const key = "dev-admin-key-change-me" // the Makefile's default
	var logs syncBuffer
	cmd := exec.Command(caddyBin(), "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "TQ_ADMIN_KEY="+key, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	gw := fmt.Sprintf("127.0.0.1:%d", port)
	for deadline := time.Now().Add(30 * time.Second); ; {
		req, _ := http.NewRequest("GET", "http://"+gw+"/quota/users", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("Caddyfile.example did not start:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !strings.Contains(script, "\nGW=localhost:8080\n") {
		t.Fatal("the walk-through does not set GW=localhost:8080")
	}
	script = strings.Replace(script, "\nGW=localhost:8080\n", "\nGW="+gw+"\n", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sh := exec.CommandContext(ctx, "bash", "-c", script)
	sh.Dir = t.TempDir()
	out, err := sh.CombinedOutput()
	if err != nil {
		t.Fatalf("the walk-through: %v\n%s", err, out)
	}
	got := strings.ReplaceAll(string(out), "\r", "")
	rest := got
	for _, answer := range walkthroughAnswers(script) {
		for _, frag := range strings.Split(answer, "…") {
			i := strings.Index(rest, frag)
			if i < 0 {
				t.Fatalf("the README shows %q; the walk-through printed, from there on:\n%s\n\nwhole output:\n%s\n\ngateway log:\n%s", frag, rest, got, logs.String())
			}
			rest = rest[i+len(frag):]
		}
	}
}

// walkthroughBlock is the sh block under "## Five-minute walk-through".
func walkthroughBlock(t *testing.T, readme string) string {
	t.Helper()
	_, after, ok := strings.Cut(readme, "## Five-minute walk-through")
	if !ok {
		t.Fatal("no walk-through in the README")
	}
	_, block, ok := strings.Cut(after, "```sh\n")
	if !ok {
		t.Fatal("no sh block in the walk-through")
	}
	block, _, ok = strings.Cut(block, "```")
	if !ok {
		t.Fatal("an unclosed sh block in the walk-through")
	}
	return block
}

// walkthroughAnswers are the answers a walk-through shows: the text after
// "# => " and on the "#    " lines right under it.
func walkthroughAnswers(script string) []string {
	var out []string
	in := false
	for line := range strings.SplitSeq(script, "\n") {
		switch {
		case strings.HasPrefix(line, "# => "):
			out, in = append(out, strings.TrimPrefix(line, "# => ")), true
		case in && strings.HasPrefix(line, "#    "):
			out = append(out, strings.TrimPrefix(line, "#    "))
		default:
			in = false
		}
	}
	return out
}

// TestReadmeSaysWhatMigrateDoes: the README tells one story of moving
// between stores: caddy quota migrate copies users and tokens (tested by
// TestMigrateCommand), and no sentence says they cannot be moved.
func TestReadmeSaysWhatMigrateDoes(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(strings.Fields(string(readme)), " ")
	for _, wrong := range []string{"not migrated", "are not moved", "cannot be migrated"} {
		if strings.Contains(text, wrong) {
			t.Errorf("the README says %q, but caddy quota migrate moves them", wrong)
		}
	}
	_, stores, _ := strings.Cut(text, "## Stores")
	stores, _, _ = strings.Cut(stores, "## Running several nodes")
	if !strings.Contains(stores, "caddy quota migrate") {
		t.Error("the Stores section does not point at caddy quota migrate")
	}
}
