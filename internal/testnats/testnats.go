// Package testnats gives tests the real NATS programs: a nats-server
// process (built from the nats-server module in go.mod) and the nats CLI.
// It is for tests only.
package testnats

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// ServerBinary returns the path of a nats-server binary built from the
// module's nats-server dependency (once per test process; the Go build
// cache makes later builds quick). Call Cleanup from TestMain to remove it.
func ServerBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "natlog-testnats-")
		if buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "nats-server")
		cmd := exec.Command("go", "build", "-o", buildBin, "github.com/nats-io/nats-server/v2")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build nats-server: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// Cleanup removes the built binaries.
func Cleanup() {
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
}

// Server is a nats-server process.
type Server struct {
	t    testing.TB
	bin  string
	Port int
	URL  string
	cmd  *exec.Cmd
	out  *bytes.Buffer
	args []string
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// StartServer starts a nats-server on a free loopback port, with extra
// arguments, and waits until it takes connections. It is killed when the
// test ends.
func StartServer(t testing.TB, args ...string) *Server {
	t.Helper()
	s := &Server{t: t, bin: ServerBinary(t), Port: FreePort(t), args: args}
	s.URL = "nats://127.0.0.1:" + strconv.Itoa(s.Port)
	s.Start()
	t.Cleanup(s.Stop)
	return s
}

// Start (re)starts the process on the same port.
func (s *Server) Start() {
	s.t.Helper()
	args := append([]string{"-a", "127.0.0.1", "-p", strconv.Itoa(s.Port)}, s.args...)
	s.cmd = exec.Command(s.bin, args...)
	s.out = &bytes.Buffer{}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(s.Port), time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("nats-server did not listen on %d: %v\n%s", s.Port, err, s.out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Stop kills the process and waits for it.
func (s *Server) Stop() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Kill()
		s.cmd.Wait()
		s.cmd = nil
	}
}

// CLI returns the path of the nats CLI (github.com/nats-io/natscli), from
// PATH or $(go env GOPATH)/bin, and skips the test if there is none.
func CLI(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("nats"); err == nil {
		return p
	}
	if out, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		p := filepath.Join(string(bytes.TrimSpace(out)), "bin", "nats")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("the nats CLI is not installed (go install github.com/nats-io/natscli/nats@v0.5.0); skipping the tests that drive natlog through it")
	return ""
}

// RunCLI runs the nats CLI against url with args, with a HOME of its own (so
// no saved context applies), and returns its combined output and error.
func RunCLI(t testing.TB, cli, url string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(cli, append([]string{"--server", url, "--timeout", "5s"}, args...)...)
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"), "NO_COLOR=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Freeze stops the process (SIGSTOP): it holds its connections but
// answers nothing, as a hung server would. Thaw resumes it.
func (s *Server) Freeze(t testing.TB) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
}

// Thaw resumes a frozen process (SIGCONT).
func (s *Server) Thaw() {
	if s.cmd != nil && s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGCONT)
	}
}
