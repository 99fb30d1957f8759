package bench

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes a server die with the benchmark (SIGKILL when the
// benchmark's thread exits), so that no server outlives a killed run.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// maxRSSMiB is ru_maxrss in MiB (Linux reports KiB).
func maxRSSMiB(ru *syscall.Rusage) float64 { return float64(ru.Maxrss) / 1024 }
