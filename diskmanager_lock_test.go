package realtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

const diskHolderEnv = "REALTIME_DISK_HOLDER_DIR"

// TestDiskManagerHolderChild opens a directory, says so, and holds it
// until it is killed: the other process of TestDiskManagerDirectoryLock.
func TestDiskManagerHolderChild(t *testing.T) {
	dir := os.Getenv(diskHolderEnv)
	if dir == "" {
		return // only as the child of TestDiskManagerDirectoryLock
	}
	m, err := OpenDiskManager(dir, nil)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(3)
	}
	if err := m.Create(context.Background(), "doc", json.RawMessage(`{"n":1}`)); err != nil {
		fmt.Println("create:", err)
		os.Exit(3)
	}
	fmt.Println("holding")
	select {}
}

// TestDiskManagerDirectoryLock: while another process holds a directory,
// OpenDiskManager on it fails with an error naming it (two managers on one
// directory drift apart and leave a log that no longer opens); once the
// holder is killed with SIGKILL, it opens, with the holder's data. The
// manager's files are readable by their owner alone.
func TestDiskManagerDirectoryLock(t *testing.T) {
	if runtime.GOOS == "windows" {
		t.Skip("no flock(2): the directory is not locked on Windows")
	}
	dir := filepath.Join(t.TempDir(), "data")
	cmd := exec.Command(os.Args[0], "-test.run=^TestDiskManagerHolderChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), diskHolderEnv+"="+dir)
	dieWithParent(cmd)
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "holding" {
		t.Fatalf("the holder did not open the directory: %q", sc.Text())
	}

	_, err := OpenDiskManager(dir, nil)
	var inUse *DirectoryInUseError
	if !errors.Is(err, ErrDirectoryInUse) || !errors.As(err, &inUse) || inUse.Dir != dir || !strings.Contains(err.Error(), dir) {
		t.Fatalf("second open: %v, want a DirectoryInUseError naming %s", err, dir)
	}

	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	m, err := OpenDiskManager(dir, nil)
	if err != nil {
		t.Fatalf("open after the holder was killed: %v", err)
	}
	defer m.Close()
	snap, err := m.Snapshot(context.Background(), "doc")
	if err != nil || string(snap.State) != `{"n":1}` {
		t.Fatalf("the holder's item: %+v, %v", snap, err)
	}
	// A second manager in the same process is refused too.
	if _, err := OpenDiskManager(dir, nil); !errors.Is(err, ErrDirectoryInUse) {
		t.Fatalf("a second open in the same process: %v", err)
	}

	m.Compact(context.Background()) // a snapshot file too
	n := 0
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		info, _ := d.Info()
		n++
		if perm := info.Mode().Perm(); perm != 0o600 {
			t.Errorf("%s has mode %v, want 0600", d.Name(), perm)
		}
		return nil
	})
	if n < 3 {
		t.Fatalf("only %d files in the directory", n)
	}
}
