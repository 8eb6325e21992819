package realtimetest_test

import (
	"context"
	"testing"

	"github.com/degenerate/realtime"
	"github.com/degenerate/realtime/realtimetest"
)

func TestMemoryManager(t *testing.T) {
	realtimetest.TestManager(t, func(t *testing.T) realtimetest.Manager { return realtime.NewMemoryManager() }, nil)
}

// openDisk opens a DiskManager on dir, closed when the test ends.
func openDisk(t *testing.T, dir string, opts *realtime.DiskManagerOptions) *realtime.DiskManager {
	m, err := realtime.OpenDiskManager(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestDiskManager(t *testing.T) {
	realtimetest.TestManager(t,
		func(t *testing.T) realtimetest.Manager { return openDisk(t, t.TempDir(), nil) },
		func(t *testing.T, m realtimetest.Manager) realtimetest.Manager {
			dm := m.(*realtime.DiskManager)
			if err := dm.Close(); err != nil {
				t.Fatal(err)
			}
			return openDisk(t, dm.Dir(), nil)
		})
}

// TestDiskManagerCompacted runs the kit with compaction after every few
// records, so snapshots and log switches happen under the concurrent
// checks too.
func TestDiskManagerCompacted(t *testing.T) {
	opts := &realtime.DiskManagerOptions{CompactAfterBytes: 2 << 10}
	realtimetest.TestManager(t,
		func(t *testing.T) realtimetest.Manager { return openDisk(t, t.TempDir(), opts) },
		func(t *testing.T, m realtimetest.Manager) realtimetest.Manager {
			dm := m.(*realtime.DiskManager)
			if err := dm.Compact(context.Background()); err != nil {
				t.Fatal(err)
			}
			dm.Close()
			return openDisk(t, dm.Dir(), opts)
		})
}
