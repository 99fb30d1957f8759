package sidecar

import "golang.org/x/sys/unix"

// openFilesBudget returns how many files the node's logs may keep open:
// maxFiles if set, else what the process's open-file limit leaves after a
// reserve for connections (the embedded nats-server's clients, HTTP) and
// everything else: a quarter of the limit, at least 256 descriptors or half
// of a smaller limit. Go raises the soft limit to the hard one at startup,
// so the soft limit read here is what the process has.
func openFilesBudget(maxFiles int) int {
	if maxFiles > 0 {
		return maxFiles
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == unix.RLIM_INFINITY || lim.Cur > 1<<30 {
		return 1 << 20
	}
	n := int(lim.Cur)
	reserve := max(min(n/2, 256), n/4)
	return max(n-reserve, 3)
}
