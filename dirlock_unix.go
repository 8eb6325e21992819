//go:build unix

package realtime

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
)

// This file holds the lock that keeps a DiskManager's directory to one
// manager at a time: an advisory flock(2) on a file in it. The kernel
// drops it with the process, SIGKILL included, so a crash never leaves a
// directory locked.

// dirLockName is the lock file in a DiskManager's directory.
const dirLockName = "LOCK"

// lockDir takes the lock of dir without waiting; the returned file holds
// it until closed. It fails with an error matching ErrDirectoryInUse when
// another manager, in this process or another, holds it.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, dirLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, &DirectoryInUseError{Dir: dir}
		}
		return nil, err
	}
	return f, nil
}
