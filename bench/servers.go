package bench

import (
	"bytes"
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
	"time"

	"github.com/nats-io/nats.go"
)

// proc is one server process: "natlog serve" or
// "natlog bench-jetstream-server".
type proc struct {
	name string
	// pprofAddr is the process's net/http/pprof endpoint (host:port),
	// if it was started with one (Config.ProfileDir).
	pprofAddr string
	cmd       *exec.Cmd
	logPath   string
	stop      os.Signal
	done      chan struct{} // closed when the process has exited
	waitErr   error         // set before done is closed
}

// startProc starts bin with args; its output goes to dir/name.log.
func startProc(bin, dir, name string, stop os.Signal, args ...string) (*proc, error) {
	p := &proc{name: name, stop: stop, logPath: filepath.Join(dir, name+".log"), done: make(chan struct{})}
	out, err := os.Create(p.logPath)
	if err != nil {
		return nil, err
	}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = out, out
	setProcAttr(p.cmd)
	if err := p.cmd.Start(); err != nil {
		out.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		p.waitErr = p.cmd.Wait()
		out.Close()
		close(p.done)
	}()
	return p, nil
}

// exited reports whether the process has exited.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// logTail is the end of the process's output, for error messages.
func (p *proc) logTail() string {
	b, _ := os.ReadFile(p.logPath)
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}

// terminate signals the process and waits for it to exit (killing it after
// timeout). It returns the process's CPU seconds (user and system) and peak
// RSS in MiB.
func (p *proc) terminate(timeout time.Duration) (cpu, rssMiB float64, err error) {
	if !p.exited() {
		_ = p.cmd.Process.Signal(p.stop)
		select {
		case <-p.done:
		case <-time.After(timeout):
			_ = p.cmd.Process.Kill()
			<-p.done
			err = fmt.Errorf("%s did not stop within %s; killed", p.name, timeout)
		}
	}
	cpu, rssMiB = usage(p.cmd.ProcessState)
	return cpu, rssMiB, err
}

// usage reads a finished process's CPU seconds and peak RSS (MiB).
func usage(ps *os.ProcessState) (cpu, rssMiB float64) {
	if ps == nil {
		return 0, 0
	}
	ru, ok := ps.SysUsage().(*syscall.Rusage)
	if !ok {
		return ps.UserTime().Seconds() + ps.SystemTime().Seconds(), 0
	}
	cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
	return cpu, maxRSSMiB(ru)
}

// servers are the processes of one system for one measurement.
type servers struct {
	procs []*proc
	url   string // where the load generator connects
	dir   string // removed by stop
	// urls are the client URLs by server name (JetStream clusters).
	urls map[string]string
}

// stop stops the processes (the first last: with natlog it holds the
// embedded NATS the others use) and removes the data directory. It
// returns the CPU seconds and peak RSS summed over the processes.
func (s *servers) stop() (cpu, rssMiB float64, err error) {
	var errs []error
	for i := len(s.procs) - 1; i >= 0; i-- {
		c, r, e := s.procs[i].terminate(30 * time.Second)
		cpu += c
		rssMiB += r
		errs = append(errs, e)
	}
	errs = append(errs, os.RemoveAll(s.dir))
	return cpu, rssMiB, errors.Join(errs...)
}

// failed returns an error naming a process that exited early, with the end
// of its output, or nil.
func (s *servers) failed() error {
	for _, p := range s.procs {
		if p.exited() {
			return fmt.Errorf("%s exited: %v\n%s", p.name, p.waitErr, p.logTail())
		}
	}
	return nil
}

// freePorts returns n distinct free loopback TCP ports.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, n)
	for i := range ports {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports[i] = l.Addr().(*net.TCPAddr).Port
	}
	return ports, nil
}

// waitConnect polls until a NATS client can connect to url, or ctx ends or
// a process of s exits.
func (s *servers) waitConnect(ctx context.Context, url string) error {
	return retry(ctx, 20*time.Millisecond, func() error {
		if err := s.failed(); err != nil {
			return err
		}
		nc, err := nats.Connect(url, nats.Timeout(time.Second))
		if err != nil {
			return errNotReady
		}
		nc.Close()
		return nil
	}, func(err error) bool { return err == errNotReady })
}

// startNatlog starts a natlog node (replicas 1) or a 3-node cluster in a
// fresh directory under workDir. n1 embeds NATS; n2 and n3 connect to it.
// Nodes are stopped with SIGINT: in cluster mode SIGTERM would make each
// leave the cluster first, which is not what is measured.
// With profile, each node serves net/http/pprof on a free loopback port.
func startNatlog(ctx context.Context, bin, workDir string, replicas int, fsync string, profile bool) (_ *servers, err error) {
	dir, err := os.MkdirTemp(workDir, "natlog-bench-natlog-")
	if err != nil {
		return nil, err
	}
	s := &servers{dir: dir}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	ports, err := freePorts(1 + replicas)
	if err != nil {
		return nil, err
	}
	s.url = fmt.Sprintf("nats://127.0.0.1:%d", ports[0])
	common := []string{"serve", "--http-listen", "off", "--fsync", fsync, "--log-level", "warn", "--shutdown-timeout", "10s"}
	if replicas > 1 {
		common = append(common, "--cluster", "bench", "--bootstrap-expect", strconv.Itoa(replicas),
			"--raft-timeout", "300ms", "--announce-interval", "250ms", "--raft-log-level", "error")
	}
	for i := 1; i <= replicas; i++ {
		id := "n" + strconv.Itoa(i)
		args := append(append([]string(nil), common...), "--data-dir", filepath.Join(dir, id), "--node-id", id)
		if i == 1 {
			args = append(args, "--nats-listen", fmt.Sprintf("127.0.0.1:%d", ports[0]))
		} else {
			args = append(args, "--nats-url", s.url)
		}
		pprofAddr := ""
		if profile {
			pprofAddr = fmt.Sprintf("127.0.0.1:%d", ports[i])
			args = append(args, "--pprof-listen", pprofAddr)
		}
		p, err := startProc(bin, dir, "natlog-"+id, os.Interrupt, args...)
		if err != nil {
			return nil, err
		}
		p.pprofAddr = pprofAddr
		s.procs = append(s.procs, p)
		if i == 1 {
			// n2 and n3 need n1's NATS to take connections.
			if err := s.waitConnect(ctx, s.url); err != nil {
				return nil, fmt.Errorf("natlog n1: %w", err)
			}
		}
	}
	t, err := dialNatlog(ctx, s.url, "bench", 1, "")
	if err != nil {
		return nil, err
	}
	defer t.Close()
	if err := t.waitReady(ctx, replicas); err != nil {
		if f := s.failed(); f != nil {
			err = f
		}
		return nil, err
	}
	if replicas > 1 {
		// n1 leads: the node in the process of the NATS server the load
		// generator uses, as JetStream's load generator talks to the
		// stream leader's server. Wherever the election put the leader,
		// move it there.
		if err := t.leadFrom(ctx, "n1"); err != nil {
			if f := s.failed(); f != nil {
				err = f
			}
			return nil, err
		}
	}
	return s, nil
}

// startJetStream starts one nats-server with JetStream (replicas 1) or a
// 3-server cluster routed on loopback, in a fresh directory under workDir.
// sync is "always" or "default". With profile, each server serves
// nats-server's profiling endpoint (net/http/pprof) on a free loopback port.
func startJetStream(ctx context.Context, bin, workDir string, replicas int, sync string, profile bool) (_ *servers, err error) {
	dir, err := os.MkdirTemp(workDir, "natlog-bench-jetstream-")
	if err != nil {
		return nil, err
	}
	s := &servers{dir: dir}
	defer func() {
		if err != nil {
			s.stop()
		}
	}()
	ports, err := freePorts(3 * replicas)
	if err != nil {
		return nil, err
	}
	var routes []string
	s.urls = map[string]string{}
	for i := range replicas {
		routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", ports[replicas+i]))
	}
	for i := range replicas {
		name := "js" + strconv.Itoa(i+1)
		args := []string{"bench-jetstream-server", "--store", filepath.Join(dir, name),
			"--listen", fmt.Sprintf("127.0.0.1:%d", ports[i]), "--name", name, "--sync", sync}
		if replicas > 1 {
			args = append(args, "--cluster-name", "bench", "--cluster-listen", fmt.Sprintf("127.0.0.1:%d", ports[replicas+i]),
				"--routes", strings.Join(routes, ","))
		}
		s.urls[name] = fmt.Sprintf("nats://127.0.0.1:%d", ports[i])
		pprofAddr := ""
		if profile {
			pprofAddr = fmt.Sprintf("127.0.0.1:%d", ports[2*replicas+i])
			args = append(args, "--prof-port", strconv.Itoa(ports[2*replicas+i]))
		}
		p, err := startProc(bin, dir, name, syscall.SIGTERM, args...)
		if err != nil {
			return nil, err
		}
		p.pprofAddr = pprofAddr
		s.procs = append(s.procs, p)
	}
	s.url = fmt.Sprintf("nats://127.0.0.1:%d", ports[0])
	for i := range replicas {
		if err := s.waitConnect(ctx, fmt.Sprintf("nats://127.0.0.1:%d", ports[i])); err != nil {
			return nil, fmt.Errorf("jetstream server %d: %w", i+1, err)
		}
	}
	return s, nil
}

// versionOf runs "bin version" and returns its output, for the results.
func versionOf(bin string) string {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return ""
	}
	return string(bytes.TrimSpace(out))
}
