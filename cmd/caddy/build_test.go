package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

var moduleIDs = []string{"tenant_quota", "http.handlers.tenant_quota", "http.handlers.tenant_quota_admin"}

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
	out := run(t, "", nil, caddyBin, "list-modules")
	for _, id := range moduleIDs {
		if !strings.Contains(out, "\n"+id+"\n") {
			t.Errorf("caddy list-modules does not show %s", id)
		}
	}
}

// TestExampleCaddyfile: Caddyfile.example is caddy fmt clean and adapts
// and validates.
func TestExampleCaddyfile(t *testing.T) {
	example := filepath.Join("..", "..", "Caddyfile.example")
	src, err := os.ReadFile(example)
	if err != nil {
		t.Fatal(err)
	}
	if got := run(t, "", nil, caddyBin, "fmt", example); got != string(src) {
		t.Errorf("Caddyfile.example is not caddy fmt clean; caddy fmt gives:\n%s", got)
	}
	dir := t.TempDir()
	run(t, "", []string{"TQ_ADMIN_KEY=k", "XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir},
		caddyBin, "adapt", "--config", example, "--adapter", "caddyfile", "--validate")
}

// TestXcaddyStyleBuild builds a throwaway main that requires this module
// through a replace and imports its root package, exactly as xcaddy
// generates it.
func TestXcaddyStyleBuild(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
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
	run(t, dir, env, "go", "build", "-o", bin, ".")
	out := run(t, dir, nil, bin, "list-modules")
	for _, id := range moduleIDs {
		if !strings.Contains(out, "\n"+id+"\n") {
			t.Errorf("the xcaddy-style build does not list %s", id)
		}
	}
}
