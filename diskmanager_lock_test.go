package realtime

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
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

// TestDiskManagerKeepsStateBytes: a state and a proposal come back after
// a restart as the bytes that were applied: <, > and & are not escaped
// (json.Marshal wrote them as six bytes each), spaces and non-ASCII stay,
// and the log holds each byte of the state once.
func TestDiskManagerKeepsStateBytes(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	quiet := &DiskManagerOptions{Logger: slog.New(slog.DiscardHandler)}
	m, err := OpenDiskManager(dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Create(ctx, "doc", json.RawMessage(`{}`), testFunctions[0]); err != nil {
		t.Fatal(err)
	}
	state := json.RawMessage(`{"html": "<b>&amp;</b>", "é": ["ü", "\u00e9", "日本"], "n" : 1}`)
	tx, err := m.Apply(ctx, "doc", testFunctions[0], state)
	if err != nil {
		t.Fatal(err)
	}
	lt := json.RawMessage(`"` + strings.Repeat("<", 30000) + `"`)
	if _, err := m.Apply(ctx, "doc", testFunctions[0], lt); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Apply(ctx, "doc", testFunctions[0], state); err != nil {
		t.Fatal(err)
	}
	before, err := m.Replay(ctx, "doc", "", tx.ID)
	if err != nil || len(before) != 1 {
		t.Fatalf("replay: %d records, %v", len(before), err)
	}
	m.Close()
	var size int64
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if info, err := e.Info(); err == nil && strings.HasPrefix(e.Name(), "log-") {
			size += info.Size()
		}
	}
	// The 30,000 '<' are in the log twice (proposal and state): 60 KB,
	// where escaping made them 360 KB.
	if size > 70000 {
		t.Errorf("the log holds %d bytes for 60,000 bytes of '<'", size)
	}

	m, err = OpenDiskManager(dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	snap, err := m.Snapshot(ctx, "doc")
	if err != nil {
		t.Fatal(err)
	}
	// The state as applied: what the function returned, compacted (as
	// every manager does) and broadcast live.
	applied := string(tx.State)
	if !strings.Contains(applied, "<b>&amp;</b>") || !strings.Contains(applied, "日本") {
		t.Fatalf("applied state %s", applied)
	}
	if string(snap.State) != applied {
		t.Fatalf("state after a restart:\n%s\nwant\n%s", snap.State, applied)
	}
	recs, err := m.Replay(ctx, "doc", "", snap.LastTransactionID)
	if err != nil || len(recs) != 3 || recs[0].TransactionID != tx.ID {
		t.Fatalf("replay after a restart: %d records, %v", len(recs), err)
	}
	if string(recs[0].Message) != string(before[0].Message) {
		t.Fatalf("replayed transaction after a restart:\n%s\nbefore:\n%s", recs[0].Message, before[0].Message)
	}
	// After a compaction (the snapshot file's encoding) too.
	if err := m.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	m.Close()
	m, err = OpenDiskManager(dir, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if snap, _ := m.Snapshot(ctx, "doc"); string(snap.State) != applied {
		t.Fatalf("state after a compaction and a restart: %s", snap.State)
	}
	// A function that returns something that is not JSON is refused, and
	// nothing unreadable reaches the log.
	bad := Function{ID: "bad", Apply: func(ctx context.Context, cur, p json.RawMessage) (json.RawMessage, error) {
		return json.RawMessage(`{"open":`), nil
	}}
	if _, err := m.Apply(ctx, "doc", bad, json.RawMessage(`1`)); err == nil {
		t.Fatal("a state that is not JSON was accepted")
	}
}

// TestDiskRecordEncoding: every field of a record, and of a snapshot's
// window, reads back as it was written.
func TestDiskRecordEncoding(t *testing.T) {
	for _, r := range []diskRecord{
		{Op: "tx", ID: "d<\"\n", V: 7, Tx: "t7", Prev: "t6", Fn: "set&", Proposed: json.RawMessage(`{"a":"<>"}`), State: json.RawMessage(`[1,"é"]`), Key: "k", At: 123, Proposer: "alice"},
		{Op: "item", ID: "d", V: 2, State: json.RawMessage(`null`), Last: "t2", Window: []diskTx{
			{ID: "t1", Fn: "f", Proposed: json.RawMessage(`1`), Key: "k1", At: 5, Proposer: "bob"}, {ID: "t2", Prev: "t1", Proposed: nil}}},
		{Op: "end", Count: 3},
		{Op: "remove", ID: "x", V: 9},
	} {
		b, err := r.appendJSON(nil)
		if err != nil {
			t.Fatal(err)
		}
		var got diskRecord
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		want := r
		for i := range want.Window {
			if want.Window[i].Proposed == nil {
				want.Window[i].Proposed = json.RawMessage("null")
			}
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s read back as %+v, want %+v", b, got, want)
		}
	}
}

// TestDiskManagerReplayWindowIsExact: with a window of 100, a cursor 100
// transactions old is replayed (from the oldest kept one) and a cursor 101
// old is not, however many the manager holds before it trims (it trims
// at twice the window), also after a restart.
func TestDiskManagerReplayWindowIsExact(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := &DiskManagerOptions{ReplayWindow: 100, Logger: slog.New(slog.DiscardHandler)}
	m, err := OpenDiskManager(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Create(ctx, "doc", json.RawMessage(`0`), testFunctions[0]); err != nil {
		t.Fatal(err)
	}
	ids := []string{""}
	for i := 1; i <= 150; i++ {
		tx, err := m.Apply(ctx, "doc", testFunctions[0], json.RawMessage(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tx.ID)
	}
	check := func(when string) {
		recs, err := m.Replay(ctx, "doc", ids[50], ids[150])
		if err != nil || len(recs) != 100 || recs[0].TransactionID != ids[51] {
			t.Fatalf("%s: a cursor 100 old: %d records, %v", when, len(recs), err)
		}
		if recs, err := m.Replay(ctx, "doc", ids[49], ids[150]); !errors.Is(err, ErrReplayCursorNotFound) {
			t.Fatalf("%s: a cursor 101 old: %d records, %v; want ErrReplayCursorNotFound", when, len(recs), err)
		}
	}
	check("live")
	m.Close()
	if m, err = OpenDiskManager(dir, opts); err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	check("after a restart")
}
