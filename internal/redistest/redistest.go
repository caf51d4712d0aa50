// Package redistest starts real redis-server processes for tests: never a
// mock. Each server listens on a free loopback port, keeps nothing on disk
// beyond the test's temporary directory, and is killed when the test ends.
// Start runs a standalone server, StartCluster a three-master Redis Cluster,
// and StartSentinel a Sentinel that monitors a server.
//
// Tests skip when redis-server (or redis-cli, for a cluster) is not on PATH,
// unless the environment variable TQ_REQUIRE_REDIS is set (to anything), in
// which case they fail: CI sets it so that a missing server cannot pass
// silently.
//
// The package is test support only: production code must not import it.
package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// RequireEnv is the environment variable that turns a missing redis-server
// from a skip into a failure.
const RequireEnv = "TQ_REQUIRE_REDIS"

// startTimeout bounds how long a server may take to answer PING.
const startTimeout = 5 * time.Second

// Server is one redis-server process owned by a test. It is safe for
// concurrent use.
type Server struct {
	addr  string
	proc  *os.Process
	bin   string
	dir   string
	extra []string
}

// Start launches a standalone redis-server on a free loopback port with
// persistence disabled, waits until it answers PING, and kills it when t
// ends. It skips t (or fails it, see RequireEnv) when redis-server is not
// installed.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := lookPath(t, "redis-server")
	dir := t.TempDir()
	addr, proc := startServer(t, bin, dir, freePort, "")
	return &Server{addr: addr, proc: proc, bin: bin, dir: dir}
}

// StartAOF is Start with the append-only file on and fsynced on every
// write, so that Kill and Restart lose nothing Redis acknowledged.
func StartAOF(t testing.TB) *Server {
	t.Helper()
	bin := lookPath(t, "redis-server")
	dir := t.TempDir()
	extra := []string{"--appendonly", "yes", "--appendfsync", "always"}
	addr, proc := startServer(t, bin, dir, freePort, "", extra...)
	return &Server{addr: addr, proc: proc, bin: bin, dir: dir, extra: extra}
}

// Kill ends the server with SIGKILL, as a crash would, and waits until its
// port refuses connections.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	if err := s.proc.Kill(); err != nil {
		t.Fatalf("redistest: kill %s: %v", s.addr, err)
	}
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", s.addr, 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("redistest: %s still accepts connections after SIGKILL", s.addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Restart starts a killed server again on the same port and directory
// (with StartAOF, from its append-only file).
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	_, port, _ := net.SplitHostPort(s.addr)
	p, _ := strconv.Atoi(port)
	_, s.proc = startServer(t, s.bin, s.dir, func(testing.TB) int { return p }, "", s.extra...)
}

// Pause freezes the server (SIGSTOP): connections stay open but nothing
// answers, like a Redis stuck in a long command or a network partition.
func (s *Server) Pause(t testing.TB) {
	t.Helper()
	if err := s.proc.Signal(syscall.SIGSTOP); err != nil {
		t.Fatalf("redistest: pause %s: %v", s.addr, err)
	}
}

// Resume lets a paused server go on (SIGCONT).
func (s *Server) Resume(t testing.TB) {
	t.Helper()
	if err := s.proc.Signal(syscall.SIGCONT); err != nil {
		t.Fatalf("redistest: resume %s: %v", s.addr, err)
	}
}

// Addr returns the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Timeout is how long a test waits on one Redis call: the read and write
// timeouts of the clients made here, and the store timeout the tests give
// their stores unless they test timeouts. The defaults (3s, and the
// store's 1s) failed tests on a 2-core machine running two suites at once.
const Timeout = 10 * time.Second

// Client returns a new client of the server with ContextTimeoutEnabled and
// read and write timeouts of Timeout, closed when t ends (closing it
// earlier is fine).
func (s *Server) Client(t testing.TB) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.addr, ContextTimeoutEnabled: true, ReadTimeout: Timeout, WriteTimeout: Timeout})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// FlushAll deletes every key on the server.
func (s *Server) FlushAll(t testing.TB) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: s.addr, ContextTimeoutEnabled: true})
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := c.FlushAll(ctx).Err(); err != nil {
		t.Fatalf("redistest: flushall on %s: %v", s.addr, err)
	}
}

// lookPath finds the named Redis program or ends the test, by skipping or
// failing according to RequireEnv.
func lookPath(t testing.TB, name string) string {
	t.Helper()
	bin, err := exec.LookPath(name)
	if err == nil {
		return bin
	}
	if os.Getenv(RequireEnv) != "" {
		t.Fatalf("redistest: %s not found on PATH and %s is set: %v", name, RequireEnv, err)
	}
	t.Skipf("redistest: %s not found on PATH; install Redis to run this test (set %s=1 to make this a failure)", name, RequireEnv)
	return ""
}

// startServer runs redis-server (bin) in dir on a port chosen by pick, with
// persistence disabled, the config file conf (none when empty) and extra
// arguments appended, and returns its address once it answers PING. A free port can be taken by someone else
// before redis-server binds it, so it tries a few; it fails t when none
// works.
func startServer(t testing.TB, bin, dir string, pick func(testing.TB) int, conf string, extra ...string) (string, *os.Process) {
	t.Helper()
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port := pick(t)
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		var args []string
		if conf != "" {
			args = append(args, conf)
		}
		args = append(args,
			"--port", strconv.Itoa(port),
			"--bind", "127.0.0.1",
			"--save", "",
			"--appendonly", "no",
			"--dir", dir,
			"--logfile", filepath.Join(dir, fmt.Sprintf("redis-%d.log", port)),
		)
		args = append(args, extra...)
		proc, err := startProcess(t, bin, dir, addr, args...)
		if err == nil {
			return addr, proc
		}
		lastErr = err
	}
	t.Fatalf("redistest: %v", lastErr)
	return "", nil
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("redistest: find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startProcess runs bin with args, waits until addr answers PING and
// registers the kill with t.Cleanup. On failure the process is gone and the
// error carries the tail of its log.
func startProcess(t testing.TB, bin, dir, addr string, args ...string) (*os.Process, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	stop := func() {
		_ = cmd.Process.Kill()
		<-done
	}

	exited := func() error {
		select {
		case <-done:
			if waitErr == nil {
				return errors.New("exited")
			}
			return waitErr
		default:
			return nil
		}
	}
	if err := waitPing(addr, cmd.Process.Pid, exited); err != nil {
		stop()
		return nil, fmt.Errorf("redis-server on %s: %w%s", addr, err, logTail(args))
	}
	t.Cleanup(stop)
	return cmd.Process, nil
}

// waitPing polls addr with PING until it answers, exited reports that the
// process ended, or startTimeout passes. The server that answers must be
// process pid: another test's redis-server may have taken the port between
// freePort and the bind (then this one exits, and the caller tries a new
// port).
func waitPing(addr string, pid int, exited func() error) error {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	deadline := time.Now().Add(startTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err := c.Ping(ctx).Err()
		var info string
		if err == nil {
			info, err = c.Info(ctx, "server").Result()
		}
		cancel()
		if err == nil {
			if strings.Contains(info, "\nprocess_id:"+strconv.Itoa(pid)+"\r\n") {
				return nil
			}
			return fmt.Errorf("another process answers on %s", addr)
		}
		if werr := exited(); werr != nil {
			return fmt.Errorf("process ended before answering PING: %w", werr)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no PING answer within %v: %w", startTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// logTail returns the end of the --logfile named in args, for error messages.
func logTail(args []string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] != "--logfile" {
			continue
		}
		b, err := os.ReadFile(args[i+1])
		if err != nil || len(b) == 0 {
			return ""
		}
		const maxTail = 2000
		if len(b) > maxTail {
			b = b[len(b)-maxTail:]
		}
		return "\n--- redis-server log ---\n" + string(b)
	}
	return ""
}
