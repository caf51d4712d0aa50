package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

var moduleIDs = []string{"tenant_quota", "http.handlers.tenant_quota", "http.handlers.tenant_quota_admin", "http.handlers.tenant_quota_usage"}

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func TestListModules(t *testing.T) {
	t.Parallel()
	out := run(t, "", nil, caddyBin(), "list-modules")
	for _, id := range moduleIDs {
		if !strings.Contains(out, "\n"+id+"\n") {
			t.Errorf("caddy list-modules does not show %s", id)
		}
	}
}

// TestExampleCaddyfile: Caddyfile.example is caddy fmt clean and adapts
// and validates.
func TestExampleCaddyfile(t *testing.T) {
	t.Parallel()
	example := filepath.Join("..", "Caddyfile.example")
	src, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	if got := run(t, "", nil, caddyBin(), "fmt", example); got != string(src) {
		t.Errorf("Caddyfile.example is not caddy fmt clean; caddy fmt gives:\n%s", got)
	}
	dir := t.TempDir()
	run(t, "", []string{"TQ_ADMIN_KEY=k", "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir},
		caddyBin(), "adapt", "--config", example, "--adapter", "caddyfile", "--validate")
}

// TestXcaddyStyleBuild builds a throwaway main that requires this module
// through a replace and imports its root package, exactly as xcaddy
// generates it.
func TestXcaddyStyleBuild(t *testing.T) {
	t.Parallel()
	recordGatewaySources()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	// In a directory of this checkout's that outlives the test, where the
	// go command finds the binary up to date when nothing changed.
	dir, unlock, err := buildDir(root, "xcaddy")
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	gomod := "module caddy\n\ngo 1.26\n\nrequire github.com/tenantquota/caddy-tenant-quota v0.0.0\n\n" +
		"replace github.com/tenantquota/caddy-tenant-quota => " + root + "\n"
	main := `package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	// plug in Caddy modules here
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "github.com/tenantquota/caddy-tenant-quota"
)

func main() {
	caddycmd.Main()
}
`
	for name, content := range map[string]string{"go.mod": gomod, "main.go": main} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The checkout's go.sum pins the same dependency versions xcaddy would
	// resolve; copying it keeps the build offline-friendly.
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.sum"), sum, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"GOFLAGS=-mod=mod"}
	run(t, dir, env, "go", "mod", "tidy")
	bin := filepath.Join(dir, "caddy")
	if runtime.GOOS == "windows" {
		bin += ".exe"
	}
	// xcaddy's default -ldflags (without its -trimpath, which would compile
	// every package a second time into the build cache).
	run(t, dir, env, "go", "build", "-ldflags", "-w -s", "-o", bin, ".")
	out := run(t, dir, nil, bin, "list-modules")
	for _, id := range moduleIDs {
		if !strings.Contains(out, "\n"+id+"\n") {
			t.Errorf("the xcaddy-style build does not list %s", id)
		}
	}
}

// TestReadmeCaddyfiles adapts and validates every Caddyfile block of the
// README with the real binary, so that no example an operator copies is
// wrong. Syntax summaries (with <placeholders>) are skipped; a snippet of
// directives is put in a site block, and global options alone get one.
func TestReadmeCaddyfiles(t *testing.T) {
	t.Parallel()
	src, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var blocks []string
	for _, part := range strings.Split(string(src), "```caddyfile\n")[1:] {
		block, _, ok := strings.Cut(part, "```")
		if !ok {
			t.Fatal("an unclosed caddyfile block in the README")
		}
		blocks = append(blocks, block)
	}
	if len(blocks) < 5 {
		t.Fatalf("only %d caddyfile blocks found", len(blocks))
	}
	dir := t.TempDir()
	tested := 0
	for i, block := range blocks {
		if strings.Contains(block, "<") {
			continue // a syntax summary
		}
		cfg := block
		switch first := strings.Fields(block)[0]; {
		case first == "{":
			if !strings.Contains(strings.TrimSpace(block), "\n}\n") {
				cfg += ":8080 {\n\trespond ok\n}\n"
			}
		case first == "handle" || first == "tenant_quota":
			cfg = ":8080 {\n" + block + "}\n"
		}
		path := filepath.Join(dir, fmt.Sprintf("block%d.caddyfile", i+1))
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(caddyBin(), "adapt", "--config", path, "--adapter", "caddyfile", "--validate")
		cmd.Env = append(os.Environ(), "TQ_ADMIN_KEY=k", "TQ_BILLING_KEY=k3", "TQ_SUPPORT_KEY=k4", "OPENAI_API_KEY=k",
			"TQ_WEBHOOK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "TQ_WEBHOOK_SECRET_OLD=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "REDIS_PASSWORD=p", "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("README caddyfile block %d does not validate: %v\n%s\n%s", i+1, err, cfg, out)
		}
		tested++
	}
	t.Logf("%d of %d blocks validated", tested, len(blocks))
}

// TestEmptyAdminKeyNamesTheVariable: an admin key whose environment
// variable is unset is refused, naming the variable.
func TestEmptyAdminKeyNamesTheVariable(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	cfg := "{\n\ttenant_quota {\n\t\tadmin_key {env.TQ_ADMIN_KEY} {env.TQ_UNSET_OLD_KEY}\n\t}\n}\n:8080 {\n\trespond ok\n}\n"
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(caddyBin(), "validate", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "TQ_ADMIN_KEY=k", "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "set the environment variable TQ_UNSET_OLD_KEY") {
		t.Fatalf("caddy validate with an unset admin key variable: %v\n%s", err, out)
	}
}

// TestValidateNextToRunningGateway: caddy validate and caddy adapt
// --validate touch no store, so they work next to a running gateway that
// holds the embedded store's file lock (the validate-then-reload
// workflow).
func TestValidateNextToRunningGateway(t *testing.T) {
	t.Parallel()
	g := startGateway(t, "", "127.0.0.1:1")
	env := append(os.Environ(), "TQ_E2E_ADMIN_KEY="+adminKey, "XDG_DATA_HOME="+g.dataDir, "XDG_CONFIG_HOME="+g.dataDir)
	for _, args := range [][]string{
		{"validate", "--config", g.caddyfile, "--adapter", "caddyfile"},
		{"adapt", "--config", g.caddyfile, "--adapter", "caddyfile", "--validate"},
	} {
		cmd := exec.Command(caddyBin(), args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("caddy %s next to a running gateway: %v\n%s", args[0], err, out)
		}
	}
	// The running gateway still serves.
	g.tenant(t, map[string]any{"name": "V", "email": "validate@example.com"})
}

// TestSiteLevelQuotaRefused: a tenant_quota at site level would refuse
// every admin call as a tenant request; such a config does not start, and
// says why.
func TestSiteLevelQuotaRefused(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "Caddyfile")
	cfg := fmt.Sprintf(`{
	admin off
	tenant_quota {
		admin_key k-0123456789
	}
}
http://127.0.0.1:%d {
	tenant_quota
	handle_path /quota/* {
		tenant_quota_admin
	}
	respond ok
}
`, freePort(t))
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	// caddy validate refuses it too, so a CI validate step fails where
	// the deploy would.
	for _, args := range [][]string{{"validate"}, {"adapt", "--validate"}} {
		v := exec.Command(caddyBin(), append(args, "--config", path, "--adapter", "caddyfile")...)
		v.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
		if out, err := v.CombinedOutput(); err == nil || !strings.Contains(string(out), "runs before tenant_quota_admin") {
			t.Fatalf("caddy %s: %v\n%s", args[0], err, out)
		}
	}
	cmd := exec.Command(caddyBin(), "run", "--config", path, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("the gateway started with tenant_quota wrapping its admin API")
	}
	if err == nil || !strings.Contains(string(out), "runs before tenant_quota_admin") {
		t.Fatalf("exit %v:\n%s", err, out)
	}
}
