package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"time"
)

// profiles are the CPU profiles of one measurement (Config.ProfileDir):
// the servers' through their net/http/pprof endpoints, the load
// generator's through runtime/pprof.
type profiles struct {
	client *os.File
	wg     sync.WaitGroup
	mu     sync.Mutex
	errs   []error
}

// startProfiles starts profiling the measurement about to run: a CPU
// profile of this process, and one fetched from every server in srv (nil:
// an existing deployment, not profiled) over the measured duration
// (rounded up to whole seconds, pprof's unit).
func startProfiles(ctx context.Context, cfg *Config, sc Scenario, system string, round int, srv *servers) (*profiles, error) {
	if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
		return nil, err
	}
	base := filepath.Join(cfg.ProfileDir, fmt.Sprintf("%s-%s-r%d", strings.ReplaceAll(sc.Name(), " ", "-"), system, round))
	p := &profiles{}
	f, err := os.Create(base + "-client.pprof")
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("client profile: %w", err)
	}
	p.client = f
	if srv == nil {
		return p, nil
	}
	secs := int(math.Ceil(cfg.Duration.Seconds()))
	for _, pr := range srv.procs {
		if pr.pprofAddr == "" {
			continue
		}
		url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", pr.pprofAddr, secs)
		path := fmt.Sprintf("%s-%s.pprof", base, pr.name)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			if err := fetchProfile(ctx, url, path, time.Duration(secs+30)*time.Second); err != nil {
				p.mu.Lock()
				p.errs = append(p.errs, fmt.Errorf("%s: %w", pr.name, err))
				p.mu.Unlock()
			}
		}()
	}
	return p, nil
}

// finish stops the client profile and waits for the servers'.
func (p *profiles) finish() error {
	pprof.StopCPUProfile()
	err := p.client.Close()
	p.wg.Wait()
	return errors.Join(append(p.errs, err)...)
}

// fetchProfile GETs a pprof profile from url into path.
func fetchProfile(ctx context.Context, url, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
