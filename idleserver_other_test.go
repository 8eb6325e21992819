//go:build !unix

package realtime

// runIdleServer: the idle-memory benchmark runs on unix systems only.
func runIdleServer(string) int { return 2 }
