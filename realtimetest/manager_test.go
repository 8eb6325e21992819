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

func TestDiskManager(t *testing.T) {
	open := func(t *testing.T, dir string) *realtime.DiskManager {
		m, err := realtime.OpenDiskManager(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	realtimetest.TestManager(t,
		func(t *testing.T) realtimetest.Manager { return open(t, t.TempDir()) },
		func(t *testing.T, m realtimetest.Manager) realtimetest.Manager {
			dm := m.(*realtime.DiskManager)
			if err := dm.Close(); err != nil {
				t.Fatal(err)
			}
			return open(t, dm.Dir())
		})
}

// TestDiskManagerCompacted runs the kit with compaction after every few
// records, so snapshots and log switches happen under the concurrent
// checks too.
func TestDiskManagerCompacted(t *testing.T) {
	opts := &realtime.DiskManagerOptions{CompactAfterBytes: 2 << 10}
	open := func(t *testing.T, dir string) *realtime.DiskManager {
		m, err := realtime.OpenDiskManager(dir, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	}
	realtimetest.TestManager(t,
		func(t *testing.T) realtimetest.Manager { return open(t, t.TempDir()) },
		func(t *testing.T, m realtimetest.Manager) realtimetest.Manager {
			dm := m.(*realtime.DiskManager)
			if err := dm.Compact(context.Background()); err != nil {
				t.Fatal(err)
			}
			dm.Close()
			return open(t, dm.Dir())
		})
}
