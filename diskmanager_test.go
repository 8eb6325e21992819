package realtime

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

var diskIncrement = Function{ID: "increment", Apply: func(ctx context.Context, current, proposed json.RawMessage) (json.RawMessage, error) {
	var s struct{ N int }
	if err := json.Unmarshal(current, &s); err != nil {
		return nil, err
	}
	return json.RawMessage(`{"n":` + strconv.Itoa(s.N+1) + `}`), nil
}}

// The crash test's child: it applies increments from several goroutines
// and prints each transaction once Apply has returned, until it is killed.
const diskChildEnv = "REALTIME_DISK_CHILD_DIR"

// crashOptions are the child's and the checker's: a window that holds the
// whole history (so the checker can read every transaction back), and
// compaction every 16 KiB, so kills also land during compactions.
var crashOptions = DiskManagerOptions{ReplayWindow: 1 << 20, CompactAfterBytes: 16 << 10, Logger: slog.New(slog.DiscardHandler)}

var crashItems = []string{"a", "b", "c"}

func TestDiskManagerCrashChild(t *testing.T) {
	dir := os.Getenv(diskChildEnv)
	if dir == "" {
		return // only as the child of TestDiskManagerSurvivesSIGKILL
	}
	m, err := OpenDiskManager(dir, &crashOptions)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(3)
	}
	for _, id := range crashItems {
		if err := m.Create(context.Background(), id, json.RawMessage(`{"n":0}`)); err != nil && !errors.Is(err, ErrShareDataExists) {
			fmt.Println("create:", err)
			os.Exit(3)
		}
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintln(out, "ready")
	out.Flush()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				id := crashItems[(g+i)%len(crashItems)]
				tx, err := m.Apply(context.Background(), id, diskIncrement, json.RawMessage(`{}`))
				if err != nil {
					fmt.Println("apply:", err)
					os.Exit(3)
				}
				mu.Lock()
				fmt.Fprintf(out, "%s %s %s\n", id, tx.ID, tx.State)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

// TestDiskManagerSurvivesSIGKILL runs a child process that applies
// transactions as fast as the disk allows and reports each one once Apply
// returned, kills it with SIGKILL after a random number of reports (a
// different moment each round: mid-batch, mid-fsync, mid-compaction),
// reopens the directory and checks that every reported transaction is
// there, in its place in the chain, with its state, and that the chain
// holds nothing a child did not apply: each state one more than the last.
// The rounds share the directory, so each recovery starts from the last.
func TestDiskManagerSurvivesSIGKILL(t *testing.T) {
	seeds := []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}
	if s := os.Getenv("REALTIME_KILL_SEEDS"); s != "" {
		seeds = nil
		for _, f := range strings.Split(s, ",") {
			n, err := strconv.ParseUint(f, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			seeds = append(seeds, n)
		}
	}
	dir := t.TempDir()
	reported := map[string]map[string]int{} // item -> tx id -> state n
	for _, id := range crashItems {
		reported[id] = map[string]int{}
	}
	for _, seed := range seeds {
		rng := rand.New(rand.NewPCG(seed, 14))
		killAfter := 1 + rng.IntN(600)
		cmd := exec.Command(os.Args[0], "-test.run=^TestDiskManagerCrashChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), diskChildEnv+"="+dir)
		dieWithParent(cmd)
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		lines, killed := 0, false
		for sc.Scan() {
			line := sc.Text()
			if line == "ready" {
				continue
			}
			f := strings.Fields(line)
			if len(f) != 3 {
				if strings.HasPrefix(line, "ok") || strings.HasPrefix(line, "PASS") {
					continue
				}
				t.Fatalf("seed %d: the child said %q", seed, line)
			}
			var st struct{ N int }
			if err := json.Unmarshal([]byte(f[2]), &st); err != nil {
				t.Fatalf("seed %d: %q: %v", seed, line, err)
			}
			reported[f[0]][f[1]] = st.N
			lines++
			if lines == killAfter && !killed {
				cmd.Process.Signal(syscall.SIGKILL)
				killed = true
			}
		}
		err = cmd.Wait()
		if !killed {
			t.Fatalf("seed %d: the child ended by itself after %d transactions: %v", seed, lines, err)
		}
		t.Logf("seed %d: killed after %d reported transactions (%d read before it died)", seed, killAfter, lines)

		m, err := OpenDiskManager(dir, &crashOptions)
		if err != nil {
			t.Fatalf("seed %d: reopening after SIGKILL: %v", seed, err)
		}
		for _, id := range crashItems {
			snap, err := m.Snapshot(context.Background(), id)
			if err != nil {
				t.Fatalf("seed %d: %s: %v", seed, id, err)
			}
			chain, err := m.Replay(context.Background(), id, "", snap.LastTransactionID)
			if err != nil && snap.LastTransactionID != "" {
				t.Fatalf("seed %d: %s: reading the chain back: %v", seed, id, err)
			}
			if uint64(len(chain)) != snap.Version {
				t.Fatalf("seed %d: %s: %d transactions in the chain, version %d", seed, id, len(chain), snap.Version)
			}
			if want := fmt.Sprintf(`{"n":%d}`, snap.Version); string(snap.State) != want {
				t.Fatalf("seed %d: %s: state %s after %d transactions of +1", seed, id, snap.State, snap.Version)
			}
			pos := map[string]int{}
			for i, rec := range chain {
				if _, dup := pos[rec.TransactionID]; dup {
					t.Fatalf("seed %d: %s: transaction %s twice in the chain", seed, id, rec.TransactionID)
				}
				pos[rec.TransactionID] = i + 1
			}
			for txid, n := range reported[id] {
				p, ok := pos[txid]
				if !ok {
					t.Fatalf("seed %d: %s: transaction %s was acknowledged (state n=%d) and is gone after SIGKILL", seed, id, txid, n)
				}
				if p != n {
					t.Fatalf("seed %d: %s: transaction %s was acknowledged with n=%d and is number %d in the chain", seed, id, txid, n, p)
				}
			}
		}
		m.Close()
	}
}

// writeSome opens dir, applies n increments to "doc" and closes it.
func writeSome(t *testing.T, dir string, n int) []*Transaction {
	t.Helper()
	m, err := OpenDiskManager(dir, &DiskManagerOptions{CompactAfterBytes: -1})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Create(t.Context(), "doc", json.RawMessage(`{"n":0}`)); err != nil && !errors.Is(err, ErrShareDataExists) {
		t.Fatal(err)
	}
	var txs []*Transaction
	for range n {
		tx, err := m.Apply(t.Context(), "doc", diskIncrement, json.RawMessage(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		txs = append(txs, tx)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	return txs
}

// onlyLog returns the path of the directory's one log file.
func onlyLog(t *testing.T, dir string) string {
	t.Helper()
	matches, _ := filepath.Glob(filepath.Join(dir, "log-*"))
	if len(matches) != 1 {
		t.Fatalf("log files: %v", matches)
	}
	return matches[0]
}

// recordOffsets returns where each record of a file starts.
func recordOffsets(t *testing.T, path string) []int64 {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var offs []int64
	res, _ := scanRecords(data, func(off int64, r *diskRecord) error { offs = append(offs, off); return nil })
	if res.bad != "" {
		t.Fatalf("%s: %s", path, res.bad)
	}
	return offs
}

func TestDiskManagerRecovery(t *testing.T) {
	openAndCount := func(t *testing.T, dir string, logs *bytes.Buffer) (*DiskManager, Snapshot) {
		t.Helper()
		m, err := OpenDiskManager(dir, &DiskManagerOptions{Logger: slog.New(slog.NewTextHandler(logs, nil))})
		if err != nil {
			t.Fatalf("open: %v", err)
		}
		t.Cleanup(func() { m.Close() })
		s, err := m.Snapshot(t.Context(), "doc")
		if err != nil {
			t.Fatal(err)
		}
		return m, s
	}

	t.Run("torn tail is cut and logged", func(t *testing.T) {
		for name, tail := range map[string][]byte{
			"half a header":              {0, 0, 1},
			"a record cut short":         append([]byte{0, 0, 0, 100, 1, 2, 3, 4}, `{"op":"tx"`...),
			"zeros after the last write": make([]byte, 4096),
		} {
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				txs := writeSome(t, dir, 5)
				path := onlyLog(t, dir)
				size := fileSize(t, path)
				appendFile(t, path, tail)
				var logs bytes.Buffer
				m, s := openAndCount(t, dir, &logs)
				if s.Version != 5 || s.LastTransactionID != txs[4].ID || string(s.State) != `{"n":5}` {
					t.Errorf("after cutting the tail: %s version %d", s.State, s.Version)
				}
				if !strings.Contains(logs.String(), "cut a torn record off the log") || !strings.Contains(logs.String(), "offset="+strconv.FormatInt(size, 10)) {
					t.Errorf("the cut was not logged with its offset %d: %s", size, logs.String())
				}
				if got := fileSize(t, path); got != size {
					t.Errorf("log is %d bytes after the cut, want %d", got, size)
				}
				// And it keeps working from there.
				tx, err := m.Apply(t.Context(), "doc", diskIncrement, json.RawMessage(`{}`))
				if err != nil || tx.PreviousID != txs[4].ID {
					t.Fatalf("apply after recovery: %v, %+v", err, tx)
				}
			})
		}
	})

	t.Run("a torn last record that fails its checksum is cut", func(t *testing.T) {
		dir := t.TempDir()
		txs := writeSome(t, dir, 5)
		path := onlyLog(t, dir)
		offs := recordOffsets(t, path)
		flipByte(t, path, fileSize(t, path)-2) // inside the last record's payload
		var logs bytes.Buffer
		_, s := openAndCount(t, dir, &logs)
		if s.Version != 4 || s.LastTransactionID != txs[3].ID {
			t.Errorf("after cutting a bad last record: version %d, last %q; want 4, %q", s.Version, s.LastTransactionID, txs[3].ID)
		}
		if !strings.Contains(logs.String(), "offset="+strconv.FormatInt(offs[len(offs)-1], 10)) {
			t.Errorf("log: %s", logs.String())
		}
	})

	t.Run("a corrupt record in the middle refuses to open", func(t *testing.T) {
		dir := t.TempDir()
		writeSome(t, dir, 5)
		path := onlyLog(t, dir)
		offs := recordOffsets(t, path)
		flipByte(t, path, offs[2]+12) // the third record's payload; three follow it
		_, err := OpenDiskManager(dir, nil)
		var ce *CorruptError
		if !errors.As(err, &ce) || ce.File != path || ce.Offset != offs[2] || !strings.Contains(ce.Reason, "checksum") {
			t.Fatalf("open: %v, want a CorruptError at %s offset %d", err, path, offs[2])
		}
		if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "offset "+strconv.FormatInt(offs[2], 10)) {
			t.Errorf("error text does not say where: %v", err)
		}
		if got := fileSize(t, path); got == offs[2] {
			t.Error("the log was cut although the fault was not at its end")
		}
	})

	t.Run("a record out of sequence refuses to open", func(t *testing.T) {
		dir := t.TempDir()
		writeSome(t, dir, 3)
		path := onlyLog(t, dir)
		rec, _ := appendDiskRecord(nil, &diskRecord{Op: "tx", ID: "doc", V: 7, Tx: "x", Prev: "y", State: json.RawMessage(`{}`)})
		more, _ := appendDiskRecord(nil, &diskRecord{Op: "update", ID: "doc", V: 8, State: json.RawMessage(`{}`)})
		size := fileSize(t, path)
		appendFile(t, path, append(rec, more...))
		_, err := OpenDiskManager(dir, nil)
		var ce *CorruptError
		if !errors.As(err, &ce) || ce.Offset != size || !strings.Contains(ce.Reason, "version 7") {
			t.Fatalf("open: %v, want a CorruptError at offset %d about version 7", err, size)
		}
	})

	t.Run("a snapshot without its end refuses to open", func(t *testing.T) {
		dir := t.TempDir()
		writeSome(t, dir, 3)
		m, err := OpenDiskManager(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Compact(t.Context()); err != nil {
			t.Fatal(err)
		}
		m.Close()
		snaps, _ := filepath.Glob(filepath.Join(dir, "snap-*"))
		if len(snaps) != 1 {
			t.Fatalf("snapshots: %v", snaps)
		}
		offs := recordOffsets(t, snaps[0])
		if err := os.Truncate(snaps[0], offs[len(offs)-1]); err != nil {
			t.Fatal(err)
		}
		_, err = OpenDiskManager(dir, nil)
		var ce *CorruptError
		if !errors.As(err, &ce) || ce.File != snaps[0] || !strings.Contains(ce.Reason, "no end record") {
			t.Fatalf("open: %v", err)
		}
	})

	t.Run("a crash during compaction opens to the right state", func(t *testing.T) {
		// The states a crash can leave: the new log created but no
		// snapshot yet (and a half-written temporary one), or the snapshot
		// in place but the old files not yet deleted.
		dir := t.TempDir()
		txs := writeSome(t, dir, 4)
		m, err := OpenDiskManager(dir, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Compact(t.Context()); err != nil {
			t.Fatal(err)
		}
		m.Close()
		more := writeSome(t, dir, 2) // into log-1
		snap1 := filepath.Join(dir, genName("snap", 1))
		saved, err := os.ReadFile(snap1)
		if err != nil {
			t.Fatal(err)
		}
		// Before the snapshot was renamed into place: only a temporary.
		os.Remove(snap1)
		os.WriteFile(snap1+".tmp", saved[:len(saved)/2], 0o644)
		for _, gen := range []uint64{0} {
			writeGen0Log(t, dir, gen, txs)
		}
		var logs bytes.Buffer
		m2, s := openAndCount(t, dir, &logs)
		if s.Version != 6 || s.LastTransactionID != more[1].ID || string(s.State) != `{"n":6}` {
			t.Errorf("with log-0, log-1 and no snapshot: %s version %d last %q", s.State, s.Version, s.LastTransactionID)
		}
		m2.Close()
		if _, err := os.Stat(snap1 + ".tmp"); !os.IsNotExist(err) {
			t.Errorf("the temporary snapshot was left: %v", err)
		}
	})
}

// writeGen0Log rebuilds log-0 as the first writeSome wrote it (create and
// the transactions), for the compaction-crash case.
func writeGen0Log(t *testing.T, dir string, gen uint64, txs []*Transaction) {
	t.Helper()
	buf, _ := appendDiskRecord(nil, &diskRecord{Op: "create", ID: "doc", State: json.RawMessage(`{"n":0}`)})
	for i, tx := range txs {
		buf, _ = appendDiskRecord(buf, &diskRecord{Op: "tx", ID: "doc", V: uint64(i + 1), Tx: tx.ID, Prev: tx.PreviousID, Fn: tx.FunctionID, Proposed: tx.ProposedData, State: tx.State})
	}
	if err := os.WriteFile(filepath.Join(dir, genName("log", gen)), buf, 0o644); err != nil {
		t.Fatal(err)
	}
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func appendFile(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	data[off] ^= 0x20
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestServerRestartReplaysFromDisk restarts a real server over a
// DiskManager while a Go client is subscribed. While the server is down,
// three transactions are applied to the directory; when it is back (a new
// process would do the same: a new manager over the same directory), the
// client reconnects with its cursor and is replayed them exactly once, in
// order, then gets live ones.
func TestServerRestartReplaysFromDisk(t *testing.T) {
	dir := t.TempDir()
	m, err := OpenDiskManager(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Create(t.Context(), "doc", json.RawMessage(`{"n":0}`)); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	serve := func(m *DiskManager, ln net.Listener) (*Server, *http.Server) {
		srv := NewServer(m, &ServerOptions{ReplayStore: m, ResolveFunction: func(ctx context.Context, id, fn string) (Function, error) { return diskIncrement, nil }, Logger: quietLogger})
		hs := &http.Server{Handler: srv, ReadHeaderTimeout: 5 * time.Second}
		go hs.Serve(ln)
		return srv, hs
	}
	srv, hs := serve(m, ln)
	c, states := newTestClient(t, "ws://"+addr+"/", ClientOptions{})
	if err := c.Connect(t.Context()); err != nil {
		t.Fatal(err)
	}
	sub, err := c.Subscribe("doc", nil)
	if err != nil {
		t.Fatal(err)
	}
	col := collect(sub)
	col.waitFor(t, "the state", func(ms []ServerMessage) bool { return len(ms) > 0 })
	var txs []*Transaction
	for range 2 {
		tx, err := m.Apply(t.Context(), "doc", diskIncrement, json.RawMessage(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		txs = append(txs, tx)
	}
	col.waitFor(t, "two live transactions", func(ms []ServerMessage) bool { return countTx(ms) == 2 })

	// Stop everything: the server, then the manager.
	srv.Shutdown(t.Context())
	hs.Close()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		return states.count(func(sc StateChange) bool { return sc.State == ClientConnecting }) > 0
	})

	// While it is down, three transactions land on disk.
	m2, err := OpenDiskManager(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		tx, err := m2.Apply(t.Context(), "doc", diskIncrement, json.RawMessage(`{}`))
		if err != nil {
			t.Fatal(err)
		}
		txs = append(txs, tx)
	}
	m2.Close()

	// Back up, from the directory alone.
	m3, err := OpenDiskManager(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m3.Close()
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv3, hs3 := serve(m3, ln2)
	defer func() { srv3.Shutdown(context.Background()); hs3.Close() }()
	col.waitFor(t, "the replay of the three", func(ms []ServerMessage) bool { return countTx(ms) == 5 })
	tx, err := m3.Apply(t.Context(), "doc", diskIncrement, json.RawMessage(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	txs = append(txs, tx)
	msgs := col.waitFor(t, "one live after the replay", func(ms []ServerMessage) bool { return countTx(ms) == 6 })

	var got []string
	replayed := 0
	for _, msg := range msgs {
		switch m := msg.(type) {
		case *TransactionMessage:
			got = append(got, m.TransactionID)
			if m.Replayed {
				replayed++
			}
		case *ErrorMessage, *ResyncMessage:
			t.Errorf("unexpected %T after the restart: %s", m, msg.AppendJSON(nil))
		}
	}
	for i, tx := range txs {
		if i >= len(got) || got[i] != tx.ID {
			t.Fatalf("transactions received %v, want %d in order ending %s", got, len(txs), tx.ID)
		}
	}
	if len(got) != len(txs) || replayed != 3 {
		t.Errorf("%d transactions (%d replayed), want %d (3 replayed)", len(got), replayed, len(txs))
	}
	if cur, _ := sub.Cursor(); cur != txs[len(txs)-1].ID {
		t.Errorf("cursor %q, want %q", cur, txs[len(txs)-1].ID)
	}
}

func countTx(ms []ServerMessage) int {
	n := 0
	for _, m := range ms {
		if _, ok := m.(*TransactionMessage); ok {
			n++
		}
	}
	return n
}
