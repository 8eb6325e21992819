//go:build !unix

package realtime

import "os"

// lockDir: only Unix systems have flock(2); elsewhere the directory is not
// locked, and opening it twice is the caller's mistake to avoid.
func lockDir(dir string) (*os.File, error) { return nil, nil }
