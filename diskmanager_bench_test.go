package realtime

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"
)

// benchManager is what the apply benchmark drives.
type benchManager interface {
	Manager
	Create(ctx context.Context, id string, state json.RawMessage, fns ...Function) error
}

// benchApplies applies b.N increments to one item from appliers
// goroutines and reports applies per second.
func benchApplies(b *testing.B, m benchManager, appliers int) {
	if err := m.Create(context.Background(), "doc", json.RawMessage(`{"n":0}`)); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	per := b.N / appliers
	for g := range appliers {
		n := per
		if g == 0 {
			n += b.N % appliers
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range n {
				if _, err := m.Apply(context.Background(), "doc", diskIncrement, json.RawMessage(`{}`)); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "applies/s")
}

// BenchmarkDiskManagerApply: durable applies (each returns after its
// fsync) with 1, 8 and 64 concurrent appliers, and the fsyncs each
// transaction cost: group commit makes it fall as appliers rise. The
// directory is under os.TempDir, on the machine's disk.
func BenchmarkDiskManagerApply(b *testing.B) {
	for _, appliers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("appliers=%d", appliers), func(b *testing.B) {
			dir, err := os.MkdirTemp("", "realtime-bench-")
			if err != nil {
				b.Fatal(err)
			}
			defer os.RemoveAll(dir)
			m, err := OpenDiskManager(dir, &DiskManagerOptions{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer m.Close()
			benchApplies(b, m, appliers)
			b.ReportMetric(float64(m.fsyncs.Load())/float64(b.N), "fsyncs/tx")
		})
	}
}

// BenchmarkMemoryManagerApply is the same load on a MemoryManager, for
// comparison.
func BenchmarkMemoryManagerApply(b *testing.B) {
	for _, appliers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("appliers=%d", appliers), func(b *testing.B) {
			benchApplies(b, NewMemoryManager(), appliers)
		})
	}
}

// BenchmarkDiskManagerReopen opens a directory that holds 1,000,000
// transactions over 100 items: after compaction (a snapshot of 100 items
// with their 100-transaction windows, and an empty log), and without it
// (the whole log replayed). The directory is built once, without fsync.
func BenchmarkDiskManagerReopen(b *testing.B) {
	const items, perItem = 100, 10000
	build := func(b *testing.B, compact bool) string {
		dir, err := os.MkdirTemp("", "realtime-reopen-")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { os.RemoveAll(dir) })
		m, err := OpenDiskManager(dir, &DiskManagerOptions{UnsafeNoSync: true, CompactAfterBytes: -1, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		var wg sync.WaitGroup
		for i := range items {
			id := "item-" + strconv.Itoa(i)
			if err := m.Create(context.Background(), id, json.RawMessage(`{"n":0}`)); err != nil {
				b.Fatal(err)
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range perItem {
					if _, err := m.Apply(context.Background(), id, diskIncrement, json.RawMessage(`{}`)); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		if compact {
			if err := m.Compact(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
		if err := m.Close(); err != nil {
			b.Fatal(err)
		}
		return dir
	}
	for _, compact := range []bool{true, false} {
		b.Run(fmt.Sprintf("compacted=%v", compact), func(b *testing.B) {
			dir := build(b, compact)
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				m, err := OpenDiskManager(dir, &DiskManagerOptions{CompactAfterBytes: -1, Logger: slog.New(slog.DiscardHandler)})
				if err != nil {
					b.Fatal(err)
				}
				if s, err := m.Snapshot(context.Background(), "item-7"); err != nil || s.Version != perItem {
					b.Fatalf("item-7: %+v %v", s, err)
				}
				m.Close()
			}
		})
	}
}
