package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http/httptest"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDiskManagerWritesResumeAfterFailure: a write that the system refuses
// (here the file-size limit, RLIMIT_FSIZE, which fails a write as a full
// disk does, with part of it written) refuses that change with an error
// that names no file and no system error, and once the disk takes writes
// again the manager accepts changes, without a restart. After a restart
// the directory opens with exactly the changes that were accepted.
func TestDiskManagerWritesResumeAfterFailure(t *testing.T) {
	ctx := context.Background()
	dir, opts, set := t.TempDir(), failOptions(), testFunctions[0]
	m := openWithDoc(t, dir, opts)
	defer m.Close()
	if _, err := m.Apply(ctx, "doc", set, json.RawMessage(`1`)); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, genName("log", 0))
	info, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}

	// The disk is "full" 100 bytes past the log's end.
	signal.Ignore(syscall.SIGXFSZ) // the write fails with EFBIG instead of killing the process
	defer signal.Reset(syscall.SIGXFSZ)
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	limited := old
	limited.Cur = uint64(info.Size()) + 100
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &limited); err != nil {
		t.Fatal(err)
	}
	restored := false
	restore := func() {
		if !restored {
			restored = true
			syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old)
		}
	}
	defer restore()

	big := json.RawMessage(`"` + strings.Repeat("x", 1000) + `"`)
	for i := 0; i < 3; i++ {
		_, err = m.Apply(ctx, "doc", set, big)
		if !errors.Is(err, ErrDiskWrite) || !errors.Is(err, syscall.EFBIG) {
			t.Fatalf("apply %d on a full disk: %v, want ErrDiskWrite caused by EFBIG", i, err)
		}
		if strings.Contains(err.Error(), dir) || strings.Contains(err.Error(), "file too large") {
			t.Fatalf("the error text %q names the file or the system's error", err)
		}
	}
	// What a proposer reads over the wire: neither the path nor errno.
	srv := NewServer(m, &ServerOptions{ResolveFunction: IDFunctionResolver(m), Logger: quietLogger})
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Shutdown(ctx)
	c := dialRT(t, "ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	c.propose("doc", "set", string(big), "c-1")
	if res := nextAs[*ProposalResultMessage](c); res.Accepted || !strings.Contains(res.Error, "could not be written") ||
		strings.Contains(res.Error, dir) || strings.Contains(res.Error, "too large") || strings.Contains(res.Error, "log-") {
		t.Fatalf("the proposer was told %q", res.Error)
	}
	// Small changes that fit are refused too while the log is failed, or
	// accepted once it is repaired: never half-applied.
	restore() // space is freed
	var tx *Transaction
	deadline := time.Now().Add(5 * time.Second) // a repair is retried at most a second after a failed one
	for {
		tx, err = m.Apply(ctx, "doc", set, json.RawMessage(`2`))
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("after the disk takes writes again: %v", err)
	}
	if tx.State == nil || string(tx.State) != "2" {
		t.Fatalf("transaction %+v", tx)
	}
	snap, _ := m.Snapshot(ctx, "doc")
	if string(snap.State) != "2" || snap.Version != 2 {
		t.Fatalf("state %s version %d, want 2 and 2 (the failed changes were not applied)", snap.State, snap.Version)
	}
	m.Close()
	m, err = OpenDiskManager(dir, opts)
	if err != nil {
		t.Fatalf("reopen after the failure: %v", err)
	}
	defer m.Close()
	snap, _ = m.Snapshot(ctx, "doc")
	if string(snap.State) != "2" || snap.Version != 2 || snap.LastTransactionID != tx.ID {
		t.Fatalf("after a restart: state %s version %d last %s, want 2, 2, %s", snap.State, snap.Version, snap.LastTransactionID, tx.ID)
	}
}

// TestDiskManagerIgnoresEmptyNewestLog: a rotation that created the next
// log and went no further leaves an empty newest log; a crash that then
// tears the previous log's tail must not make the directory unopenable.
func TestDiskManagerIgnoresEmptyNewestLog(t *testing.T) {
	ctx := context.Background()
	dir, opts, set := t.TempDir(), failOptions(), testFunctions[0]
	m := openWithDoc(t, dir, opts)
	for i := 1; i <= 5; i++ {
		if _, err := m.Apply(ctx, "doc", set, json.RawMessage(`1`)); err != nil {
			t.Fatal(err)
		}
	}
	m.Close()
	// A torn record at the end of log 0, and an empty log 1.
	rec, _ := appendDiskRecord(nil, &diskRecord{Op: "tx", ID: "doc", V: 7, Tx: "t", State: json.RawMessage(`9`)})
	f, err := os.OpenFile(filepath.Join(dir, genName("log", 0)), os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f.Write(rec[:len(rec)/2])
	f.Close()
	if err := os.WriteFile(filepath.Join(dir, genName("log", 1)), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	m, err = OpenDiskManager(dir, opts)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer m.Close()
	if snap, _ := m.Snapshot(ctx, "doc"); snap.Version != 5 {
		t.Fatalf("version %d after the open, want 5", snap.Version)
	}
	if _, err := m.Apply(ctx, "doc", set, json.RawMessage(`2`)); err != nil {
		t.Fatal(err)
	}
}

// failOptions are the failure tests' options: no compaction, no logs.
func failOptions() *DiskManagerOptions {
	return &DiskManagerOptions{CompactAfterBytes: -1, Logger: slog.New(slog.DiscardHandler)}
}

// openWithDoc opens dir and creates "doc" (state 0) with the set function.
func openWithDoc(t *testing.T, dir string, opts *DiskManagerOptions) *DiskManager {
	t.Helper()
	m, err := OpenDiskManager(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Create(context.Background(), "doc", json.RawMessage(`0`), testFunctions[0]); err != nil {
		t.Fatal(err)
	}
	return m
}
