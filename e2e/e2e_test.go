package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tenantquota/caddy-tenant-quota/internal/redistest"
)

// gatewayBin is the gateway built from ./cmd/caddy once for all tests;
// tests reach it through caddyBin.
var gatewayBin string

// gatewaySources are the files of this module the gateway is built from
// (see caddyBin).
var gatewaySources []string

// The tests live apart from ./cmd/caddy so that their race-enabled test
// binary does not link all of Caddy (13 s, on the critical path of make
// test); they build the gateway as a subprocess instead, into a cache
// directory of this checkout where the go command finds it up to date when
// nothing changed (under a second instead of 5 and more).
func TestMain(m *testing.M) {
	if os.Getenv("TQ_SKIP_E2E") != "" {
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "tq-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	gatewayBin = filepath.Join(dir, "caddy")
	if err := buildGateway(gatewayBin); err != nil {
		fmt.Fprintln(os.Stderr, "building the gateway:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	if gatewaySources, err = listGatewaySources(); err != nil {
		fmt.Fprintln(os.Stderr, "listing the gateway's sources:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	{
		var a, b syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &a)
		syscall.Getrusage(syscall.RUSAGE_CHILDREN, &b)
		fmt.Fprintf(os.Stderr, "RUSAGE self %v+%v children %v+%v\n", a.Utime.Sec, a.Stime.Sec, b.Utime.Sec, b.Stime.Sec)
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// buildGateway builds ./cmd/caddy without the symbol table and DWARF, as
// xcaddy builds by default (stack traces keep their names), and copies it
// to dst. The build's own output stays in a cache directory keyed by this
// checkout, written under a lock, so that the go command relinks only when
// something changed and two suites of one checkout never write it at once;
// the copy keeps this run's binary whole whatever a later build does.
func buildGateway(dst string) error {
	root, err := filepath.Abs("..")
	if err != nil {
		return err
	}
	dir, unlock, err := buildDir(root, "gateway")
	if err != nil {
		return err
	}
	defer unlock()
	built := filepath.Join(dir, "caddy")
	build := exec.Command("go", "build", "-ldflags=-s -w", "-o", built, "./cmd/caddy")
	build.Dir = root
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return err
	}
	src, err := os.Open(built)
	if err != nil {
		return err
	}
	defer src.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, src); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// buildDir is this checkout's directory for the build called name, in the
// user's cache directory, locked until unlock is called.
func buildDir(root, name string) (dir string, unlock func(), err error) {
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	sum := sha256.Sum256([]byte(root))
	dir = filepath.Join(cache, "caddy-tenant-quota-e2e", hex.EncodeToString(sum[:8]), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	lock, err := os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return "", nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		lock.Close()
		return "", nil, err
	}
	return dir, func() { lock.Close() }, nil
}

// listGatewaySources lists the files of this module that go into the
// gateway (its packages' Go and embedded files, go.mod and go.sum) as the
// go command sees them.
func listGatewaySources() ([]string, error) {
	root, err := filepath.Abs("..")
	if err != nil {
		return nil, err
	}
	list := exec.Command("go", "list", "-deps", "-f",
		`{{if and .Module .Module.Main}}{{range .GoFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{range .EmbedFiles}}{{$.Dir}}/{{.}}{{"\n"}}{{end}}{{end}}`,
		"./cmd/caddy")
	list.Dir = root
	list.Stderr = os.Stderr
	out, err := list.Output()
	if err != nil {
		return nil, err
	}
	files := append(strings.Fields(string(out)), filepath.Join(root, "go.mod"), filepath.Join(root, "go.sum"))
	if len(files) < 20 {
		return nil, fmt.Errorf("go list names only %d files", len(files))
	}
	return files, nil
}

var recordSources sync.Once

// caddyBin is the path of the gateway. Its first call opens each of the
// gateway's sources and reads the build's environment: the go command
// notes what a test opens and reads, and runs the tests again instead of
// reporting a cached result when one of them changed. Without it a change
// to the plugin would go untested here, as this test binary does not
// import the plugin.
func caddyBin() string {
	recordGatewaySources()
	return gatewayBin
}

// recordGatewaySources is caddyBin's first step, for tests that build the
// plugin themselves.
func recordGatewaySources() {
	recordSources.Do(func() {
		for _, name := range []string{"GOFLAGS", "GOEXPERIMENT", "GOOS", "GOARCH", "CGO_ENABLED", "GOTOOLCHAIN"} {
			os.Getenv(name)
		}
		for _, f := range gatewaySources {
			if fh, err := os.Open(f); err == nil {
				fh.Close()
			}
		}
	})
}

const adminKey = "e2e-admin-key-0123456789"

// freePort hands out a loopback port no other test on this machine holds,
// for the rest of the test. The kernel's free port is not enough: Caddy
// binds with SO_REUSEPORT, so two gateways handed the same port (by two
// probes, or a restart on a port another test was given meanwhile) both
// start and the kernel splits the connections between them. Each port is
// reserved with an exclusive lock on a file named after it, which every
// suite on the machine respects and the kernel drops if the test process
// dies.
func freePort(t *testing.T) int {
	t.Helper()
	dir := filepath.Join(os.TempDir(), "tq-e2e-ports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	for range 100 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(port)), os.O_CREATE|os.O_RDWR, 0o666)
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			f.Close() // another test holds it
			continue
		}
		t.Cleanup(func() { f.Close() })
		return port
	}
	t.Fatal("no free port after 100 tries")
	return 0
}

// backend is a loopback stand-in for a chatbot backend that records what
// reaches it.
type backend struct {
	*httptest.Server
	hits     atomic.Int64
	mu       sync.Mutex
	lastAuth []string
	tenants  []string
}

func newBackend(t *testing.T) *backend {
	b := &backend{}
	b.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.hits.Add(1)
		b.mu.Lock()
		b.lastAuth = append(b.lastAuth, r.Header.Get("Authorization"))
		b.tenants = append(b.tenants, r.Header.Get("X-Tenant-ID"))
		b.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"object":"chat.completion","choices":[{"message":{"role":"assistant","content":"hi"}}]}`)
	}))
	t.Cleanup(b.Close)
	return b
}

// gateway is a running Caddy built from cmd/caddy.
type gateway struct {
	url       string
	adminAddr string
	caddyfile string
	dataDir   string
	cmd       *exec.Cmd
	exited    chan struct{} // closed once cmd has exited
	logs      *syncBuffer
}

// syncBuffer collects a process's output while tests read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startGateway starts Caddy with the tenant_quota app configured by
// globalOpts, in front of backendAddr.
func startGateway(t *testing.T, globalOpts, backendAddr string) *gateway {
	t.Helper()
	return startGatewayWith(t, globalOpts, "", "", backendAddr)
}

// startGatewayWith is startGateway with lines for the site block (named
// matchers) and for the tenant_quota directive's block.
func startGatewayWith(t *testing.T, globalOpts, siteLines, handlerLines, backendAddr string) *gateway {
	t.Helper()
	dir := t.TempDir()
	for attempt := 1; ; attempt++ {
		g := writeGatewayConfig(t, dir, globalOpts, siteLines, handlerLines, backendAddr)
		err := g.tryStart(t, g.caddyfile)
		if err == nil {
			return g
		}
		if !errors.Is(err, errPortTaken) || attempt == 3 {
			t.Fatal(err)
		}
	}
}

// writeGatewayConfig writes the Caddyfile of a gateway on fresh ports in dir.
func writeGatewayConfig(t *testing.T, dir, globalOpts, siteLines, handlerLines, backendAddr string) *gateway {
	t.Helper()
	port, adminPort := freePort(t), freePort(t)
	caddyfile := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	tenant_quota {
		admin_key {env.TQ_E2E_ADMIN_KEY} second-rotation-key
		# Generous unless a test sets its own: a 2-core machine running
		# two suites at once must not turn a slow moment into 503s (1s
		# did, beside a second suite).
		store_timeout 5s
		%s
	}
}
http://127.0.0.1:%d {
	bind 127.0.0.1
	%s
	handle_path /quota/* {
		tenant_quota_admin
	}
	handle {
		tenant_quota {
			%s
		}
		reverse_proxy %s {
			header_up X-Tenant-ID {http.quota.user.id}
		}
	}
}
`, adminPort, globalOpts, port, siteLines, handlerLines, backendAddr)
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &gateway{
		url: fmt.Sprintf("http://127.0.0.1:%d", port), adminAddr: fmt.Sprintf("127.0.0.1:%d", adminPort),
		caddyfile: path, dataDir: filepath.Join(dir, "data"), logs: &syncBuffer{},
	}
	return g
}

func (g *gateway) start(t *testing.T, caddyfile string) {
	t.Helper()
	if err := g.tryStart(t, caddyfile); err != nil {
		t.Fatal(err)
	}
}

// errPortTaken: Caddy exited at start because another process (a gateway
// or Redis of a test running beside) took one of the ports freePort handed
// out between the probe and the bind.
var errPortTaken = errors.New("a port was taken")

// tryStart starts Caddy and waits until it answers as this gateway: its own
// admin API serves this config (another test's gateway may answer on a port
// taken from under us) and the admin API of the plugin answers with the
// store open.
func (g *gateway) tryStart(t *testing.T, caddyfile string) error {
	t.Helper()
	cmd := exec.Command(caddyBin(), "run", "--config", caddyfile, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), "TQ_E2E_ADMIN_KEY="+adminKey, "XDG_DATA_HOME="+g.dataDir, "XDG_CONFIG_HOME="+g.dataDir)
	cmd.Stdout, cmd.Stderr = g.logs, g.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	g.cmd, g.exited = cmd, exited
	t.Cleanup(func() { g.stop(t) })
	port := g.url[strings.LastIndex(g.url, ":"):]
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := g.answers(port)
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			g.cmd = nil
			if strings.Contains(g.logs.String(), "address already in use") {
				return fmt.Errorf("%w: %s", errPortTaken, g.logs)
			}
			return fmt.Errorf("gateway exited at start:\n%s", g.logs)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gateway did not start: %v\n%s", err, g.logs)
		}
	}
}

// answers says whether this gateway is up: Caddy's admin API serves a
// config that listens on port (":<port>"), and the plugin's admin API
// answers without 503 (the HTTP server may listen before the tenant_quota
// app has opened the store).
func (g *gateway) answers(port string) error {
	resp, err := client.Get("http://" + g.adminAddr + "/config/apps/http/servers")
	if err != nil {
		return err
	}
	cfg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(cfg), port+`"`) {
		return fmt.Errorf("the admin API at %s serves another config", g.adminAddr)
	}
	req, _ := http.NewRequest("GET", g.url+"/quota/users?limit=1", nil)
	req.Header.Set("Authorization", "Bearer "+adminKey)
	resp, err = client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusServiceUnavailable {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	return nil
}

// stop ends Caddy the way an operator does (SIGTERM: a clean stop).
func (g *gateway) stop(t *testing.T) {
	if g.cmd == nil {
		return
	}
	g.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(15 * time.Second):
		g.cmd.Process.Kill()
		<-g.exited
		t.Errorf("gateway did not stop on SIGTERM\n%s", g.logs)
	}
	g.cmd = nil
}

// kill ends Caddy as a crash does (SIGKILL) and waits until it is gone.
func (g *gateway) kill() {
	if g.cmd == nil {
		return
	}
	g.cmd.Process.Kill()
	<-g.exited
	g.cmd = nil
}

// client is the tests' HTTP client. It keeps no idle connections: the
// tests start, stop and reload many gateways on ports the system hands out
// again, and a POST on a pooled connection to a gateway that is gone (or
// that a reload closed) fails with EOF and is not retried.
var client = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// call sends a request and decodes a JSON response into out (if not nil).
func call(t *testing.T, method, url, bearer string, body any, out any) *http.Response {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(context.Background(), method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var sent []byte
	if body != nil {
		sent, _ = json.Marshal(body)
	}
	checkAdminExchange(t, req, sent, resp.StatusCode, resp.Header, data)
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decoding %q: %v", method, url, data, err)
		}
	}
	resp.Body = io.NopCloser(bytes.NewReader(data))
	return resp
}

func wantStatus(t *testing.T, resp *http.Response, want int) {
	t.Helper()
	if resp.StatusCode != want {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("%s %s: status %d, want %d: %s", resp.Request.Method, resp.Request.URL.Path, resp.StatusCode, want, body)
	}
}

// tenant creates a user with a token through the admin API.
func (g *gateway) tenant(t *testing.T, fields map[string]any) userResp {
	t.Helper()
	fields["issueToken"] = true
	var created userResp
	wantStatus(t, call(t, "POST", g.url+"/quota/users", adminKey, fields, &created), http.StatusCreated)
	return created
}

// used returns a tenant's lifetime counter of resource, read through the
// admin API.
func (g *gateway) used(t *testing.T, userID, resource string) int64 {
	t.Helper()
	var usage struct {
		Items []struct {
			Resource, Per string
			Used          int64
		} `json:"items"`
	}
	wantStatus(t, call(t, "GET", g.url+"/quota/users/"+userID+"/usage", adminKey, nil, &usage), http.StatusOK)
	for _, it := range usage.Items {
		if it.Resource == resource && it.Per == "lifetime" {
			return it.Used
		}
	}
	return 0
}

// burst sends n requests at once, made by mk, and counts the answers by
// status code (0 for a transport error).
func burst(n int, mk func(i int) *http.Request) map[int]int64 {
	var mu sync.Mutex
	counts := map[int]int64{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	tr := &http.Transport{MaxIdleConnsPerHost: n}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	for i := 0; i < n; i++ {
		req := mk(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			status := 0
			if resp, err := c.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				status = resp.StatusCode
			}
			mu.Lock()
			counts[status]++
			mu.Unlock()
		}()
	}
	close(start)
	wg.Wait()
	return counts
}

// tenantRequest is a POST to the gateway with a tenant's token.
func tenantRequest(url, token, body string) *http.Request {
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	return req
}

type stores struct {
	name string
	opts func(t *testing.T) string
}

func allStores() []stores {
	return []stores{
		{"embedded", func(t *testing.T) string { return "" }},
		{"redis", func(t *testing.T) string {
			return "redis redis://" + redistest.Start(t).Addr() + "/0"
		}},
	}
}

type userResp struct {
	User struct {
		ID string `json:"id"`
	} `json:"user"`
	Token struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	} `json:"token"`
}

type openAIErr struct {
	Error struct {
		Message  string `json:"message"`
		Type     string `json:"type"`
		Code     string `json:"code"`
		Resource string `json:"resource"`
		Limit    int64  `json:"limit"`
	} `json:"error"`
}

// TestWalkthrough follows the README's walk-through on both stores.
func TestWalkthrough(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be := newBackend(t)
			g := startGateway(t, st.opts(t), strings.TrimPrefix(be.URL, "http://"))
			admin := g.url + "/quota"

			wantStatus(t, call(t, "GET", admin+"/users", "", nil, nil), http.StatusUnauthorized)
			wantStatus(t, call(t, "GET", admin+"/users", "second-rotation-key", nil, nil), http.StatusOK)

			var created userResp
			resp := call(t, "POST", admin+"/users", adminKey, map[string]any{
				"name": "Ada", "email": "Ada@Example.com", "externalId": "crm-42",
				"limits": map[string]any{"messages": 3, "tokens": map[string]any{"limit": 1000, "per": "day"}}, "issueToken": true,
			}, &created)
			wantStatus(t, resp, http.StatusCreated)
			tok, uid := created.Token.Token, created.User.ID
			if !strings.HasPrefix(tok, "tq_") || uid == "" {
				t.Fatalf("create returned user %q token %q", uid, tok)
			}

			// No token, a malformed token, an unknown token: 401, nothing proxied.
			resp = call(t, "POST", g.url+"/v1/chat/completions", "", map[string]any{}, nil)
			wantStatus(t, resp, http.StatusUnauthorized)
			if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("401 without WWW-Authenticate: Bearer: %v", resp.Header)
			}
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", "tq_garbage", map[string]any{}, nil), http.StatusUnauthorized)
			typo := tok[:len(tok)-1] + "x"
			if typo == tok {
				typo = tok[:len(tok)-1] + "y"
			}
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", typo, map[string]any{}, nil), http.StatusUnauthorized)
			if be.hits.Load() != 0 {
				t.Fatalf("unauthenticated requests reached the backend")
			}

			for i := 0; i < 3; i++ {
				resp = call(t, "POST", g.url+"/v1/chat/completions", tok, map[string]any{"model": "m"}, nil)
				wantStatus(t, resp, http.StatusOK)
			}
			if rl := resp.Header.Get("RateLimit"); !strings.Contains(rl, `"messages-lifetime";r=0`) {
				t.Fatalf("RateLimit header after the third message: %q", rl)
			}
			be.mu.Lock()
			for i, a := range be.lastAuth {
				if a != "" {
					t.Fatalf("request %d reached the backend with Authorization %q", i, a)
				}
				if be.tenants[i] != uid {
					t.Fatalf("request %d reached the backend with X-Tenant-ID %q, want %q", i, be.tenants[i], uid)
				}
			}
			be.mu.Unlock()

			var e openAIErr
			resp = call(t, "POST", g.url+"/v1/chat/completions", tok, map[string]any{"model": "m"}, &e)
			wantStatus(t, resp, http.StatusTooManyRequests)
			if e.Error.Code != "quota_exceeded" || e.Error.Resource != "messages" || e.Error.Limit != 3 || resp.Header.Get("x-should-retry") != "false" {
				t.Fatalf("429 body %+v headers %v", e, resp.Header)
			}
			if be.hits.Load() != 3 {
				t.Fatalf("backend saw %d requests, want 3", be.hits.Load())
			}

			var usage struct {
				Items []struct {
					Resource  string `json:"resource"`
					Per       string `json:"per"`
					Used      int64  `json:"used"`
					Remaining *int64 `json:"remaining"`
				} `json:"items"`
			}
			wantStatus(t, call(t, "GET", admin+"/users/"+uid+"/usage", adminKey, nil, &usage), http.StatusOK)
			found := false
			for _, it := range usage.Items {
				if it.Resource == "messages" && it.Per == "lifetime" {
					found = it.Used == 3 && it.Remaining != nil && *it.Remaining == 0
				}
			}
			if !found {
				t.Fatalf("usage after 3 messages: %+v", usage)
			}

			// Raising the limit takes effect on the next request.
			wantStatus(t, call(t, "PATCH", admin+"/users/"+uid+"/limits", adminKey, map[string]any{"messages": 4}, nil), http.StatusOK)
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", tok, map[string]any{}, nil), http.StatusOK)
			// So does a window (its counter starts with the limit).
			wantStatus(t, call(t, "PATCH", admin+"/users/"+uid+"/limits", adminKey, map[string]any{"messages": []any{100, map[string]any{"limit": 1, "per": "day"}}}, nil), http.StatusOK)
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", tok, map[string]any{}, nil), http.StatusOK)
			resp = call(t, "POST", g.url+"/v1/chat/completions", tok, map[string]any{}, &e)
			wantStatus(t, resp, http.StatusTooManyRequests)
			if e.Error.Code != "rate_limited" || resp.Header.Get("Retry-After") == "" {
				t.Fatalf("window 429: %+v %v", e, resp.Header)
			}

			// Disabled: 403. Enabled again: through.
			wantStatus(t, call(t, "PATCH", admin+"/users/"+uid, adminKey, map[string]any{"status": "disabled", "limits": map[string]any{"messages": 100}}, nil), http.StatusOK)
			resp = call(t, "POST", g.url+"/v1/chat/completions", tok, map[string]any{}, &e)
			wantStatus(t, resp, http.StatusForbidden)
			if e.Error.Code != "account_disabled" {
				t.Fatalf("403 body: %+v", e)
			}
			wantStatus(t, call(t, "PATCH", admin+"/users/"+uid, adminKey, map[string]any{"status": "active"}, nil), http.StatusOK)
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", tok, map[string]any{}, nil), http.StatusOK)

			// Revoke: 401 on the next request.
			wantStatus(t, call(t, "DELETE", admin+"/users/"+uid+"/tokens/"+created.Token.ID, adminKey, nil, nil), http.StatusNoContent)
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", tok, map[string]any{}, nil), http.StatusUnauthorized)

			// A second token, then delete the user: the token dies with it.
			var tok2 struct {
				Token string `json:"token"`
			}
			wantStatus(t, call(t, "POST", admin+"/users/"+uid+"/tokens", adminKey, map[string]any{"name": "ci"}, &tok2), http.StatusCreated)
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", tok2.Token, map[string]any{}, nil), http.StatusOK)
			wantStatus(t, call(t, "DELETE", admin+"/users/"+uid, adminKey, nil, nil), http.StatusNoContent)
			wantStatus(t, call(t, "GET", admin+"/users/"+uid, adminKey, nil, nil), http.StatusNotFound)
			wantStatus(t, call(t, "POST", g.url+"/v1/chat/completions", tok2.Token, map[string]any{}, nil), http.StatusUnauthorized)
		})
	}
}

// TestConcurrentCap: 200 concurrent requests through the gateway against a
// messages cap of 50 admit exactly 50, on both stores.
func TestConcurrentCap(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be := newBackend(t)
			g := startGateway(t, st.opts(t), strings.TrimPrefix(be.URL, "http://"))
			created := g.tenant(t, map[string]any{
				"name": "Load", "email": "load@example.com", "limits": map[string]any{"messages": 50}, "issueToken": true,
			})

			const n = 200
			counts := burst(n, func(int) *http.Request {
				return tenantRequest(g.url+"/v1/chat/completions", created.Token.Token, `{}`)
			})
			if counts[http.StatusOK] != 50 || counts[http.StatusTooManyRequests] != n-50 {
				t.Fatalf("200 concurrent requests against a cap of 50: answers by status %v", counts)
			}
			if be.hits.Load() != 50 {
				t.Fatalf("backend saw %d requests, want 50", be.hits.Load())
			}
			if got := g.used(t, created.User.ID, "messages"); got != 50 {
				t.Fatalf("messages counter = %d, want 50", got)
			}
		})
	}
}

// TestEmbeddedStoreSurvivesRestart: users, tokens and counts outlive a
// clean stop of the embedded store.
func TestEmbeddedStoreSurvivesRestart(t *testing.T) {
	t.Parallel()
	be := newBackend(t)
	g := startGateway(t, "", strings.TrimPrefix(be.URL, "http://"))
	created := g.tenant(t, map[string]any{
		"name": "Bo", "email": "bo@example.com", "limits": map[string]any{"messages": 2}, "issueToken": true,
	})
	wantStatus(t, call(t, "POST", g.url+"/v1/x", created.Token.Token, map[string]any{}, nil), http.StatusOK)
	g.stop(t)
	if _, err := os.Stat(filepath.Join(g.dataDir, "caddy", "tenant_quota", "quota.db")); err != nil {
		t.Fatalf("embedded store not in Caddy's data directory: %v", err)
	}
	g.start(t, g.caddyfile)
	wantStatus(t, call(t, "POST", g.url+"/v1/x", created.Token.Token, map[string]any{}, nil), http.StatusOK)
	wantStatus(t, call(t, "POST", g.url+"/v1/x", created.Token.Token, map[string]any{}, nil), http.StatusTooManyRequests)
}

// TestReloadKeepsState: config reloads share the open store and the cache
// instead of reopening them, so counts go on and no connection leaks.
func TestReloadKeepsState(t *testing.T) {
	t.Parallel()
	for _, st := range allStores() {
		t.Run(st.name, func(t *testing.T) {
			t.Parallel()
			be := newBackend(t)
			var rc *redis.Client
			opts := ""
			if st.name == "redis" {
				srv := redistest.Start(t)
				rc = srv.Client(t)
				opts = "redis redis://" + srv.Addr() + "/0"
			}
			g := startGateway(t, opts, strings.TrimPrefix(be.URL, "http://"))
			created := g.tenant(t, map[string]any{
				"name": "R", "email": "r@example.com", "limits": map[string]any{"messages": 12}, "issueToken": true,
			})
			clients := func() string {
				if rc == nil {
					return ""
				}
				info, err := rc.Info(context.Background(), "clients").Result()
				if err != nil {
					t.Fatal(err)
				}
				for _, line := range strings.Split(info, "\n") {
					if strings.HasPrefix(line, "connected_clients:") {
						return strings.TrimSpace(line)
					}
				}
				return ""
			}
			wantStatus(t, call(t, "POST", g.url+"/v1/x", created.Token.Token, map[string]any{}, nil), http.StatusOK)
			before := clients()
			for i := 0; i < 10; i++ {
				run(t, "", nil, caddyBin(), "reload", "--config", g.caddyfile, "--adapter", "caddyfile", "--address", g.adminAddr, "--force")
				wantStatus(t, call(t, "POST", g.url+"/v1/x", created.Token.Token, map[string]any{}, nil), http.StatusOK)
			}
			if after := clients(); after != before {
				t.Errorf("redis clients before and after 10 reloads: %s, %s", before, after)
			}
			wantStatus(t, call(t, "POST", g.url+"/v1/x", created.Token.Token, map[string]any{}, nil), http.StatusOK)
			wantStatus(t, call(t, "POST", g.url+"/v1/x", created.Token.Token, map[string]any{}, nil), http.StatusTooManyRequests)
			if strings.Contains(g.logs.String(), `"level":"error"`) {
				t.Errorf("errors logged during reloads:\n%s", g.logs)
			}
		})
	}
}

// TestTwoNodes: two Caddy processes sharing one Redis (standalone or a
// 3-master Cluster) admit exactly the cap
// between them, and a revocation on one is enforced on the other within a
// second.
func TestTwoNodes(t *testing.T) {
	t.Parallel()
	for _, topo := range []struct {
		name string
		opts func(t *testing.T) string
	}{
		{"standalone", func(t *testing.T) string { return "redis redis://" + redistest.Start(t).Addr() + "/0" }},
		{"cluster", func(t *testing.T) string {
			return "redis redis-cluster://" + strings.Join(redistest.StartCluster(t).Addrs(), ",")
		}},
	} {
		t.Run(topo.name, func(t *testing.T) {
			t.Parallel()
			testTwoNodes(t, topo.opts(t))
		})
	}
}

func testTwoNodes(t *testing.T, opts string) {
	be := newBackend(t)
	a := startGateway(t, opts, strings.TrimPrefix(be.URL, "http://"))
	b := startGateway(t, opts, strings.TrimPrefix(be.URL, "http://"))
	created := a.tenant(t, map[string]any{
		"name": "Two", "email": "two@example.com", "limits": map[string]any{"messages": 100}, "issueToken": true,
	})

	const n = 400
	counts := burst(n, func(i int) *http.Request {
		target := a.url
		if i%2 == 1 {
			target = b.url
		}
		return tenantRequest(target+"/v1/chat/completions", created.Token.Token, `{}`)
	})
	if counts[http.StatusOK] != 100 || counts[http.StatusTooManyRequests] != n-100 || be.hits.Load() != 100 {
		t.Fatalf("400 requests over two nodes against a cap of 100: answers by status %v, backend saw %d", counts, be.hits.Load())
	}

	// Raise the cap on A; B must see it (its cache holds the old user).
	wantStatus(t, call(t, "PATCH", a.url+"/quota/users/"+created.User.ID+"/limits", adminKey, map[string]any{"messages": 1000}, nil), http.StatusOK)
	eventually(t, "raised limit on the other node", func() bool {
		return call(t, "POST", b.url+"/v1/x", created.Token.Token, map[string]any{}, nil).StatusCode == http.StatusOK
	})
	// Revoke on B; A must refuse the token.
	wantStatus(t, call(t, "DELETE", b.url+"/quota/users/"+created.User.ID+"/tokens/"+created.Token.ID, adminKey, nil, nil), http.StatusNoContent)
	eventually(t, "revocation on the other node", func() bool {
		return call(t, "POST", a.url+"/v1/x", created.Token.Token, map[string]any{}, nil).StatusCode == http.StatusUnauthorized
	})
}

// eventually polls cond for up to one second.
// settles polls cond for up to 10s and says whether it came true.
func settles(cond func() bool) bool {
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			return false
		}
	}
	return true
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	within(t, time.Second, what, cond)
}

// within waits up to d for cond.
func within(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not in effect within %v", what, d)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRedisOutage freezes Redis under two gateways: one denies (the
// default), one allows 2 requests per tenant per minute. No request waits
// on the frozen store past its deadline for long, unverifiable tokens get
// 503 (never 401), and both recover when Redis does.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	be := newBackend(t)
	srv := redistest.Start(t)
	redisOpt := "redis redis://" + srv.Addr() + "/0\n\t\tstore_timeout 300ms"
	deny := startGateway(t, redisOpt, strings.TrimPrefix(be.URL, "http://"))
	allow := startGateway(t, redisOpt+"\n\t\ton_store_error allow 2 per minute", strings.TrimPrefix(be.URL, "http://"))
	created := deny.tenant(t, map[string]any{
		"name": "O", "email": "o@example.com", "limits": map[string]any{"messages": 1000}, "issueToken": true,
	})
	var unused struct {
		Token string `json:"token"`
	}
	wantStatus(t, call(t, "POST", deny.url+"/quota/users/"+created.User.ID+"/tokens", adminKey, map[string]any{}, &unused), http.StatusCreated)
	tok := created.Token.Token
	// Warm both hot caches with 5 requests served by each. The store
	// timeout is 300ms: at 50ms a busy machine (the suite runs tests side
	// by side) timed out before the pause, and the allow gateway spent its
	// allowance there. A 503 here is sent again; its admission, cancelled,
	// counts nothing.
	for _, g := range []*gateway{deny, allow} {
		deadline := time.Now().Add(10 * time.Second)
		for served := 0; served < 5; {
			switch code := call(t, "POST", g.url+"/v1/x", tok, map[string]any{}, nil).StatusCode; {
			case code == http.StatusOK:
				served++
			case code != http.StatusServiceUnavailable || time.Now().After(deadline):
				t.Fatalf("warming up: status %d", code)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	hitsBefore := be.hits.Load()

	logsBefore := len(deny.logs.String()) // the outage's lines are counted below
	pausedAt := time.Now()
	srv.Pause(t)
	resumed := false
	defer func() {
		if !resumed {
			srv.Resume(t)
		}
	}()
	var slowest time.Duration
	timed := func(g *gateway, token string, want int, code string) {
		t.Helper()
		start := time.Now()
		var e openAIErr
		resp := call(t, "POST", g.url+"/v1/x", token, map[string]any{}, &e)
		slowest = max(slowest, time.Since(start))
		wantStatus(t, resp, want)
		if code != "" && e.Error.Code != code {
			t.Fatalf("code %q, want %q", e.Error.Code, code)
		}
	}
	for i := 0; i < 8; i++ { // past the breaker's threshold
		timed(deny, tok, http.StatusServiceUnavailable, "quota_unavailable")
	}
	timed(allow, tok, http.StatusOK, "")
	timed(allow, tok, http.StatusOK, "")
	timed(allow, tok, http.StatusServiceUnavailable, "quota_unavailable")
	timed(allow, unused.Token, http.StatusServiceUnavailable, "quota_unavailable")
	timed(deny, unused.Token, http.StatusServiceUnavailable, "quota_unavailable")
	t.Logf("slowest answer while Redis was frozen: %v (store_timeout 300ms)", slowest)
	// A bounded number of log lines, not one per refused request: at most
	// one a second per message.
	outage := time.Since(pausedAt)
	if n := strings.Count(deny.logs.String()[logsBefore:], `"msg":"quota store unavailable"`); n < 1 || n > 1+int(outage/time.Second) {
		t.Fatalf("%d 'quota store unavailable' lines for 9 refused requests in %v\n%s", n, outage, deny.logs)
	}
	// A hang detector, not a speed test: a request waiting on the frozen
	// store would take the client's 15s.
	if slowest > 5*time.Second {
		t.Fatalf("a request waited %v on a frozen Redis", slowest)
	}
	if got := be.hits.Load() - hitsBefore; got != 2 {
		t.Fatalf("backend saw %d requests during the outage, want the 2 the allowance let through", got)
	}

	srv.Resume(t)
	resumed = true
	for _, g := range []*gateway{deny, allow} {
		deadline := time.Now().Add(10 * time.Second)
		for call(t, "POST", g.url+"/v1/x", tok, map[string]any{}, nil).StatusCode != http.StatusOK {
			if time.Now().After(deadline) {
				t.Fatalf("gateway did not recover after Redis came back")
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Counted exactly what was served: the 10 warm-up requests, the 2 the
	// allowance let through (journaled, counted once Redis is back) and the
	// 2 after recovery; the admissions that were stuck in the frozen Redis
	// for requests that got 503 are cancelled, not counted.
	lifetime := func() int64 { return deny.used(t, created.User.ID, "messages") }
	deadline := time.Now().Add(15 * time.Second)
	for lifetime() != 14 {
		if time.Now().After(deadline) {
			t.Fatalf("messages counter = %d, want 14 (the requests served)", lifetime())
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond)
	if got := lifetime(); got != 14 {
		t.Fatalf("messages counter moved on to %d after settling at 14", got)
	}
}

// TestRedisKilled kills Redis (SIGKILL) under load and restarts it from its
// append-only file: every request is answered promptly (200 or 503), and
// once the settlements are replayed the counters equal the requests served
// and the backend-reported token usage of each.
func TestRedisKilled(t *testing.T) {
	t.Parallel()
	be, hits := llmBackend(t)
	srv := redistest.StartAOF(t)
	g := startGateway(t, "redis redis://"+srv.Addr()+"/0\n\t\tstore_timeout 50ms", strings.TrimPrefix(be.URL, "http://"))
	created := g.tenant(t, map[string]any{
		"name": "K", "email": "k@example.com", "limits": map[string]any{"messages": 1_000_000}, "issueToken": true,
	})

	var served, refused, other atomic.Int64
	var slowest atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	c := &http.Client{Timeout: 10 * time.Second}
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 5000; n++ { // bounded even if stop never came
				select {
				case <-stop:
					return
				default:
				}
				// Each completion reports 30 tokens (10 in, 20 out).
				req := tenantRequest(g.url+"/v1/chat/completions", created.Token.Token,
					`{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":50}`)
				start := time.Now()
				resp, err := c.Do(req)
				if d := int64(time.Since(start)); d > slowest.Load() {
					slowest.Store(d)
				}
				if err != nil {
					other.Add(1)
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				switch resp.StatusCode {
				case http.StatusOK:
					served.Add(1)
				case http.StatusServiceUnavailable:
					refused.Add(1)
				default:
					other.Add(1)
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond)
	srv.Kill(t)
	time.Sleep(700 * time.Millisecond)
	srv.Restart(t)
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()
	t.Logf("served %d, refused %d, slowest answer %v", served.Load(), refused.Load(), time.Duration(slowest.Load()))
	if other.Load() != 0 || refused.Load() == 0 || served.Load() == 0 {
		t.Fatalf("served %d, refused %d, other %d: want only 200s and 503s, some of each", served.Load(), refused.Load(), other.Load())
	}
	if hits.Load() != served.Load() {
		t.Fatalf("backend saw %d requests, clients got %d 200s", hits.Load(), served.Load())
	}
	// Messages equal the requests served, and tokens the backend-reported
	// usage of every completed request, once the settlements of requests
	// that finished while Redis was down have been replayed.
	settled := func() bool {
		return g.used(t, created.User.ID, "messages") == served.Load() && g.used(t, created.User.ID, "tokens") == 30*served.Load()
	}
	deadline := time.Now().Add(15 * time.Second)
	for !settled() {
		if time.Now().After(deadline) {
			t.Fatalf("messages %d, tokens %d; want %d and %d (the requests served and their usage)",
				g.used(t, created.User.ID, "messages"), g.used(t, created.User.ID, "tokens"), served.Load(), 30*served.Load())
		}
		time.Sleep(100 * time.Millisecond)
	}
}
