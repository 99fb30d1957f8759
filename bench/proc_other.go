//go:build !linux

package bench

import (
	"os/exec"
	"runtime"
	"syscall"
)

func setProcAttr(*exec.Cmd) {}

// maxRSSMiB is ru_maxrss in MiB (bytes on macOS, KiB elsewhere).
func maxRSSMiB(ru *syscall.Rusage) float64 {
	if runtime.GOOS == "darwin" {
		return float64(ru.Maxrss) / (1 << 20)
	}
	return float64(ru.Maxrss) / 1024
}
