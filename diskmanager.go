package realtime

import (
	"context"
	crand "crypto/rand"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// This file holds DiskManager: share data kept in a directory, with group
// commit, recovery and compaction. The file format is disklog.go.

// Defaults of DiskManagerOptions.
const (
	defaultDiskReplayWindow = 100
	defaultCompactAfter     = 16 << 20
)

// errDiskClosed is returned by a DiskManager's calls after Close.
var errDiskClosed = errors.New("realtime: disk manager closed")

// ErrDiskWrite is matched (errors.Is) by the error of a change that was
// not applied because the log could not be written or synced (a full
// disk, an I/O error). Its text names neither the file nor the system's
// error, which the manager logs instead (a proposer reads the text); the
// system's error is its cause (errors.Is(err, syscall.ENOSPC)). The
// manager repairs its log (cuts what the failed write left) and accepts
// changes again as soon as the disk takes them.
var ErrDiskWrite = errors.New("realtime: disk manager: the change could not be written to disk")

// diskWriteError is ErrDiskWrite with the system's error as its cause.
type diskWriteError struct{ cause error }

func (e *diskWriteError) Error() string        { return ErrDiskWrite.Error() }
func (e *diskWriteError) Is(target error) bool { return target == ErrDiskWrite }
func (e *diskWriteError) Unwrap() error        { return e.cause }

// repairRetry is how long after a failed repair of the log the manager
// tries again, at the next change.
const repairRetry = time.Second

// ErrDirectoryInUse is matched (errors.Is) by the error of
// OpenDiskManager on a directory that another DiskManager holds open, in
// this process or another.
var ErrDirectoryInUse = errors.New("realtime: disk manager: directory in use")

// DirectoryInUseError is OpenDiskManager's error for a directory that
// another DiskManager holds open: two managers on one directory would
// each accept writes the other does not see, and leave a log that no
// longer opens. The lock goes with the holding process, also when it is
// killed; on systems without flock(2) (Windows) there is no lock.
type DirectoryInUseError struct {
	Dir string // the directory, as given to OpenDiskManager
}

func (e *DirectoryInUseError) Error() string {
	return "realtime: disk manager: directory " + strconv.Quote(e.Dir) + " is in use by another DiskManager (its " + dirLockName + " file is locked)"
}

// Is reports whether target is ErrDirectoryInUse.
func (e *DirectoryInUseError) Is(target error) bool { return target == ErrDirectoryInUse }

// DiskManagerOptions configure a DiskManager. A zero field means its
// documented default, a negative one none.
type DiskManagerOptions struct {
	// ReplayWindow is the number of transactions kept per share data for
	// replay, in memory and in every snapshot, so a client that reconnects
	// after a restart is still replayed what it missed. Zero means 100.
	// Negative means none.
	ReplayWindow int
	// CompactAfterBytes is the log size past which the manager starts a new
	// log and writes a snapshot of every item in the background, then
	// deletes the old log. Zero means 16 MiB. Negative means never: the
	// log grows without bound.
	CompactAfterBytes int64
	// UnsafeNoSync skips the fsync after each write. A crash of the process
	// still loses nothing (the data is in the kernel), but a crash of the
	// machine or a power cut loses acknowledged transactions. For tests and
	// benchmarks only.
	UnsafeNoSync bool
	// Logger receives the manager's logs: a torn tail cut off at open, a
	// failed compaction. Nil means slog.Default().
	Logger *slog.Logger
}

func (o DiskManagerOptions) withDefaults() DiskManagerOptions {
	switch {
	case o.ReplayWindow == 0:
		o.ReplayWindow = defaultDiskReplayWindow
	case o.ReplayWindow < 0:
		o.ReplayWindow = 0
	}
	if o.CompactAfterBytes == 0 {
		o.CompactAfterBytes = defaultCompactAfter
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return o
}

// DiskManager keeps share data in a directory, with nothing but the
// standard library: an append-only log of every change (create,
// transaction, update, remove), each record checksummed, and snapshots that
// compaction writes so the log does not grow without bound. It does what
// MemoryManager does, with the same transaction id and version rules, and
// it is also the ReplayStore of a server over it (pass it as
// ServerOptions.ReplayStore), so the replay window survives restarts.
//
// Durability: when Apply, Create, Update or Remove returns without error,
// the change is on disk (written and fsync'd), so a proposer that sees
// accepted: true holds a transaction that a kill -9 or a power cut cannot
// take back. Concurrent changes share one write and one fsync (group
// commit): the appliers that queue while one fsync runs go out together in
// the next. Listeners hear of a change once it is on disk, in log order.
//
// Recovery: OpenDiskManager restores every item's state, version, last
// transaction id and replay window. A record torn by a crash at the end of
// the newest log is cut off and logged; a bad record anywhere else is a
// *CorruptError and the directory does not open. Transaction ids carry a
// prefix drawn at every open, so they stay unique across restarts.
//
// Functions are code, not data: register them again after every open
// (Create's functions for a new item, AddFunction for an existing one).
//
// A directory is opened by one DiskManager at a time: a second
// OpenDiskManager on it, in any process, fails with a *DirectoryInUseError
// until the first is closed or its process ends (however it ends). Its
// files are readable by their owner alone (0600, in a 0700 directory).
type DiskManager struct {
	dir    string
	lock   *os.File // holds the directory's lock until Close (nil: none here)
	opts   DiskManagerOptions
	log    *slog.Logger
	prefix string
	seq    atomic.Uint64

	mu    sync.RWMutex // guards items
	items map[string]*diskItem

	listeners listenerSet

	cmu     sync.Mutex // guards the fields below it
	queue   []*diskPending
	closing bool
	failed  error // a write or fsync failed and the log is not repaired yet
	// repairAt is when the next repair of a failed log may be tried, and
	// repairDue asks the committer to try it.
	repairAt  time.Time
	repairDue bool
	wake      chan struct{}

	snapDone chan struct{} // closed when the running (or last) compaction ends
	snapErr  error         // its result

	// Owned by the committer goroutine.
	logf       *os.File
	gen        uint64
	logSize    int64
	wantRotate chan rotation // a Compact waiting for the end of this batch

	compacting atomic.Bool
	wg         sync.WaitGroup // the committer and a snapshot writer

	fsyncs  atomic.Uint64 // for benchmarks
	records atomic.Uint64
}

// diskItem is one share data item. Its head is what the next change
// builds on, changes still waiting for their fsync included; its committed
// fields are what is on disk and what listeners heard of. Snapshot and
// Replay read only the committed fields.
type diskItem struct {
	hmu      sync.Mutex // guards the head and fns; held while a function runs
	hState   json.RawMessage
	hLast    string
	hVersion uint64
	hRemoved bool
	fns      map[string]Function
	hKeys    *keyWindows // keyed proposals' outcomes per proposer, rebuilt from the window at open

	smu     sync.Mutex // guards the committed fields; held while listeners run
	live    bool       // created on disk and not removed
	state   json.RawMessage
	last    string
	version uint64
	window  []windowEntry // oldest first; Replay serves the last ReplayWindow, it is trimmed at 2x
}

// windowEntry is one transaction of the replay window: what a replayed
// transaction frame carries (no state).
type windowEntry struct {
	id, prev, fn string
	proposed     json.RawMessage
	msg          []byte // the replayed frame's payload, once a replay encoded it
	key          string // the proposal's idempotency key, if it had one
	at           int64  // when a keyed transaction was applied, Unix ns
	proposer     string // the keyed proposal's proposer (WithProposer)
}

// diskPending is one record waiting for the committer: commit applies it
// to the committed state and tells the listeners, after the fsync.
type diskPending struct {
	rec    []byte
	commit func()
	done   chan error // buffered 1
}

// OpenDiskManager opens (creating it if needed) the directory dir and
// restores its share data. A nil opts means the defaults.
func OpenDiskManager(dir string, opts *DiskManagerOptions) (*DiskManager, error) {
	var o DiskManagerOptions
	if opts != nil {
		o = *opts
	}
	o = o.withDefaults()
	// Only the owner reads the data: states, proposals and keys.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("realtime: disk manager: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		if errors.Is(err, ErrDirectoryInUse) {
			return nil, err
		}
		return nil, fmt.Errorf("realtime: disk manager: %w", err)
	}
	var b [10]byte
	crand.Read(b[:])
	m := &DiskManager{dir: dir, opts: o, log: o.Logger, items: make(map[string]*diskItem), lock: lock,
		prefix: base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]),
		wake:   make(chan struct{}, 1)}
	if err := m.recover(); err != nil {
		if m.logf != nil {
			m.logf.Close()
		}
		if lock != nil {
			lock.Close()
		}
		return nil, err
	}
	for _, it := range m.items {
		it.hKeys = keysFromWindow(it.window, it.last)
	}
	m.wg.Add(1)
	go m.run()
	return m, nil
}

// recover loads the newest snapshot, replays the logs from its generation
// on, cuts a torn tail off the newest log, and opens it for appending.
func (m *DiskManager) recover() error {
	snaps, logs, err := listGenerations(m.dir)
	if err != nil {
		return fmt.Errorf("realtime: disk manager: %w", err)
	}
	// Versions before 0.2 created their files readable by every user.
	for _, g := range snaps {
		os.Chmod(filepath.Join(m.dir, genName("snap", g)), 0o600)
	}
	for _, g := range logs {
		os.Chmod(filepath.Join(m.dir, genName("log", g)), 0o600)
	}
	var base uint64
	if len(snaps) > 0 {
		base = snaps[len(snaps)-1]
		if err := m.loadSnapshot(filepath.Join(m.dir, genName("snap", base))); err != nil {
			return err
		}
	}
	var replay []uint64
	for _, g := range logs {
		if g >= base {
			replay = append(replay, g)
		}
	}
	// An empty newest log is a rotation that created it and went no
	// further (it failed, or the process died): it holds no record, and
	// the log before it is the newest, whose torn tail is cut as usual.
	for len(replay) > 1 {
		path := filepath.Join(m.dir, genName("log", replay[len(replay)-1]))
		if info, err := os.Stat(path); err != nil || info.Size() != 0 {
			break
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("realtime: disk manager: %w", err)
		}
		replay = replay[:len(replay)-1]
		syncDir(m.dir)
	}
	for i, g := range replay {
		if g != base+uint64(i) {
			return &CorruptError{File: filepath.Join(m.dir, genName("log", base+uint64(i))), Reason: "this log is missing between " + genName("snap", base) + " and " + genName("log", g)}
		}
	}
	if len(replay) == 0 {
		f, err := m.createLog(base)
		if err != nil {
			return err
		}
		m.logf, m.gen = f, base
	}
	for i, g := range replay {
		path := filepath.Join(m.dir, genName("log", g))
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("realtime: disk manager: %w", err)
		}
		var recErr error
		res, _ := scanRecords(data, func(off int64, r *diskRecord) error {
			if reason := m.replayRecord(r); reason != "" {
				recErr = &CorruptError{File: path, Offset: off, Reason: reason}
				return recErr
			}
			return nil
		})
		if recErr != nil {
			return recErr
		}
		last := i == len(replay)-1
		if res.bad != "" {
			if !last || !res.torn {
				return &CorruptError{File: path, Offset: res.good, Reason: res.bad + " with " + strconv.Itoa(len(data)-int(res.good)) + " bytes from it to the end"}
			}
			m.log.Warn("realtime: disk manager: cut a torn record off the log (a crash during a write; nothing acknowledged is lost)",
				"file", path, "offset", res.good, "bytes", int64(len(data))-res.good, "reason", res.bad)
			if err := os.Truncate(path, res.good); err != nil {
				return fmt.Errorf("realtime: disk manager: %w", err)
			}
		}
		if last {
			f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0o600)
			if err != nil {
				return fmt.Errorf("realtime: disk manager: %w", err)
			}
			if err := f.Sync(); err != nil {
				f.Close()
				return fmt.Errorf("realtime: disk manager: %w", err)
			}
			m.logf, m.gen, m.logSize = f, g, res.good
		}
	}
	// Generations before the snapshot are what a compaction that crashed
	// before its cleanup left behind.
	for _, g := range snaps {
		if g < base {
			os.Remove(filepath.Join(m.dir, genName("snap", g)))
		}
	}
	for _, g := range logs {
		if g < base {
			os.Remove(filepath.Join(m.dir, genName("log", g)))
		}
	}
	return nil
}

// loadSnapshot restores the items of a snapshot file, which must be whole.
func (m *DiskManager) loadSnapshot(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("realtime: disk manager: %w", err)
	}
	items, ended := 0, false
	var recErr error
	res, _ := scanRecords(data, func(off int64, r *diskRecord) error {
		switch {
		case ended:
			recErr = &CorruptError{File: path, Offset: off, Reason: "a record after the snapshot's end"}
		case r.Op == "end":
			ended = true
			if r.Count != items {
				recErr = &CorruptError{File: path, Offset: off, Reason: fmt.Sprintf("the snapshot ends after %d items but says %d", items, r.Count)}
			}
		case r.Op == "item" && m.items[r.ID] == nil:
			items++
			it := &diskItem{fns: make(map[string]Function), live: true}
			it.state, it.last, it.version = r.State, r.Last, r.V
			for _, w := range r.Window {
				it.window = append(it.window, windowEntry{id: w.ID, prev: w.Prev, fn: w.Fn, proposed: w.Proposed, key: w.Key, at: w.At, proposer: w.Proposer})
			}
			it.syncHead()
			m.items[r.ID] = it
		default:
			recErr = &CorruptError{File: path, Offset: off, Reason: "an unexpected " + strconv.Quote(r.Op) + " record for " + quoteForError(r.ID)}
		}
		return recErr
	})
	if recErr != nil {
		return recErr
	}
	if res.bad != "" {
		return &CorruptError{File: path, Offset: res.good, Reason: res.bad}
	}
	if !ended {
		return &CorruptError{File: path, Offset: res.good, Reason: "the snapshot has no end record"}
	}
	return nil
}

// replayRecord applies a log record at open, and says what is wrong with
// it when it does not follow from the state before it.
func (m *DiskManager) replayRecord(r *diskRecord) string {
	it := m.items[r.ID]
	if r.Op == "create" {
		if it != nil {
			return "a create of " + quoteForError(r.ID) + ", which exists"
		}
		it = &diskItem{fns: make(map[string]Function), live: true, state: r.State}
		it.syncHead()
		m.items[r.ID] = it
		return ""
	}
	if it == nil {
		return "a " + strconv.Quote(r.Op) + " record for " + quoteForError(r.ID) + ", which does not exist"
	}
	if r.V != it.version+1 {
		return fmt.Sprintf("version %d of %s after version %d", r.V, quoteForError(r.ID), it.version)
	}
	switch r.Op {
	case "tx":
		if r.Prev != it.last {
			return "transaction " + quoteForError(r.Tx) + " does not follow " + quoteForError(it.last)
		}
		it.state, it.last = r.State, r.Tx
		m.pushWindow(it, windowEntry{id: r.Tx, prev: r.Prev, fn: r.Fn, proposed: r.Proposed, key: r.Key, at: r.At, proposer: r.Proposer})
	case "update":
		it.state = r.State
	case "remove":
		delete(m.items, r.ID)
	default:
		return "an unknown record " + strconv.Quote(r.Op)
	}
	it.version = r.V
	it.syncHead()
	return ""
}

// syncHead makes the head equal to the committed state (at open).
func (it *diskItem) syncHead() {
	it.hState, it.hLast, it.hVersion = it.state, it.last, it.version
}

// pushWindow adds a transaction to the item's replay window; the caller
// holds smu (or is opening the manager).
func (m *DiskManager) pushWindow(it *diskItem, e windowEntry) {
	w := m.opts.ReplayWindow
	if w == 0 {
		return
	}
	it.window = append(it.window, e)
	if len(it.window) > 2*w {
		n := copy(it.window, it.window[len(it.window)-w:])
		clear(it.window[n:])
		it.window = it.window[:n]
	}
}

// createLog creates the log of generation gen. When it cannot make the
// file durable, it removes it again: a rotation that failed must leave
// nothing behind (an empty newer log made a torn tail of the older one
// look like corruption in the middle of the history). Recovery ignores an
// empty newest log for the same reason, in case the removal did not reach
// the disk either.
func (m *DiskManager) createLog(gen uint64) (*os.File, error) {
	path := filepath.Join(m.dir, genName("log", gen))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("realtime: disk manager: %w", err)
	}
	if err := syncDir(m.dir); err != nil {
		f.Close()
		os.Remove(path)
		return nil, fmt.Errorf("realtime: disk manager: %w", err)
	}
	return f, nil
}

// enqueue hands a record to the committer. It fails once the manager is
// closed or a write failed.
func (m *DiskManager) enqueue(p *diskPending) error {
	m.cmu.Lock()
	defer m.cmu.Unlock()
	if m.failed != nil {
		if !m.repairDue && !time.Now().Before(m.repairAt) {
			m.repairDue = true // the committer repairs the log; later changes may then go through
			select {
			case m.wake <- struct{}{}:
			default:
			}
		}
		return m.failed
	}
	if m.closing {
		return errDiskClosed
	}
	m.queue = append(m.queue, p)
	select {
	case m.wake <- struct{}{}:
	default:
	}
	return nil
}

// run is the committer: it writes what queued while the last fsync ran in
// one write, fsyncs it, then commits each record in order.
func (m *DiskManager) run() {
	defer m.wg.Done()
	var buf []byte
	for {
		m.cmu.Lock()
		for len(m.queue) == 0 && !m.closing && !m.repairDue {
			m.cmu.Unlock()
			<-m.wake
			m.cmu.Lock()
		}
		batch := m.queue
		m.queue = nil
		closing, repair := m.closing, m.repairDue
		m.cmu.Unlock()
		if repair {
			m.repair()
			continue
		}
		if len(batch) == 0 && closing {
			return
		}
		buf = buf[:0]
		for _, p := range batch {
			buf = append(buf, p.rec...)
		}
		_, err := m.logf.Write(buf)
		if err == nil && !m.opts.UnsafeNoSync {
			err = m.logf.Sync()
			m.fsyncs.Add(1)
		}
		if err != nil {
			m.log.Error("realtime: disk manager: writing the log failed; changes are refused until it is repaired",
				"dir", m.dir, "records", len(batch), "err", err)
			werr := &diskWriteError{cause: err}
			// What is queued was built on the failed records: it fails
			// too, and nothing more is queued until the repair.
			m.cmu.Lock()
			m.failed = werr
			rest := m.queue
			m.queue = nil
			m.cmu.Unlock()
			for _, p := range batch {
				p.done <- werr
			}
			for _, p := range rest {
				p.done <- werr
			}
			m.repair()
			continue
		}
		m.logSize += int64(len(buf))
		m.records.Add(uint64(len(batch)))
		for _, p := range batch {
			p.commit()
			p.done <- nil
		}
		if cap(buf) > 1<<20 {
			buf = nil // do not keep a large batch's buffer
		}
		switch {
		case m.wantRotate != nil:
			r := rotation{busy: m.compacting.Load()}
			if !r.busy {
				r.done, r.err = m.rotate()
			}
			m.wantRotate <- r
			m.wantRotate = nil
		case m.opts.CompactAfterBytes > 0 && m.logSize >= m.opts.CompactAfterBytes && !m.compacting.Load():
			if _, err := m.rotate(); err != nil {
				m.log.Error("realtime: disk manager: compaction failed; the log keeps growing", "err", err)
			}
		}
	}
}

// repair makes the manager accept changes again after a failed write:
// every item's head goes back to what is on disk (the changes built on
// the failed records were refused), and the log is cut back to its last
// synced size, so what the failed write may have left in it is gone. When
// cutting or syncing fails too, the manager stays failed and tries again
// at a change at least repairRetry later. It runs on the committer.
func (m *DiskManager) repair() {
	m.mu.RLock()
	items := make([]*diskItem, 0, len(m.items))
	for _, it := range m.items {
		items = append(items, it)
	}
	m.mu.RUnlock()
	for _, it := range items {
		it.hmu.Lock()
		it.smu.Lock()
		it.hState, it.hLast, it.hVersion = it.state, it.last, it.version
		it.hRemoved = !it.live // a create that failed is no item; a remove that failed removed nothing
		it.smu.Unlock()
		it.hmu.Unlock()
	}
	err := m.logf.Truncate(m.logSize)
	if err == nil && !m.opts.UnsafeNoSync {
		err = m.logf.Sync()
	}
	m.cmu.Lock()
	m.repairDue = false
	if err != nil {
		m.repairAt = time.Now().Add(repairRetry)
		m.cmu.Unlock()
		m.log.Error("realtime: disk manager: repairing the log failed; trying again at a change", "dir", m.dir, "retry_after", repairRetry, "err", err)
		return
	}
	m.failed = nil
	m.cmu.Unlock()
	m.log.Warn("realtime: disk manager: the log is repaired; changes are accepted again", "dir", m.dir)
}

// rotate starts compaction. It runs on the committer between batches, so
// the committed state is exactly what the log holds: it captures that
// state (a pointer copy per item), starts log gen+1, and writes snap-(gen+1)
// in the background; once that is on disk, the older files go.
func (m *DiskManager) rotate() (chan struct{}, error) {
	capture := m.capture()
	next := m.gen + 1
	f, err := m.createLog(next)
	if err != nil {
		return nil, err
	}
	old := m.logf
	m.logf, m.gen, m.logSize = f, next, 0
	old.Close()
	done := make(chan struct{})
	m.compacting.Store(true)
	m.cmu.Lock()
	m.snapDone = done
	m.cmu.Unlock()
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		err := m.writeSnapshot(next, capture)
		if err != nil {
			m.log.Error("realtime: disk manager: writing a snapshot failed; the older log stays", "err", err)
		} else {
			m.removeBefore(next)
		}
		m.cmu.Lock()
		m.snapErr = err
		m.cmu.Unlock()
		m.compacting.Store(false)
		close(done)
	}()
	return done, nil
}

// capturedItem is one item as a snapshot records it.
type capturedItem struct {
	id      string
	state   json.RawMessage
	last    string
	version uint64
	window  []windowEntry
}

func (m *DiskManager) capture() []capturedItem {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make([]capturedItem, 0, len(m.items))
	for id, it := range m.items {
		it.smu.Lock()
		if it.live {
			w := it.window
			if n := m.opts.ReplayWindow; len(w) > n {
				w = w[len(w)-n:]
			}
			out = append(out, capturedItem{id: id, state: it.state, last: it.last, version: it.version,
				window: append([]windowEntry(nil), w...)})
		}
		it.smu.Unlock()
	}
	return out
}

func (m *DiskManager) writeSnapshot(gen uint64, items []capturedItem) error {
	return writeFileSynced(filepath.Join(m.dir, genName("snap", gen)), func(w io.Writer) error {
		var buf []byte
		var err error
		for _, it := range items {
			r := diskRecord{Op: "item", ID: it.id, V: it.version, State: it.state, Last: it.last}
			for _, e := range it.window {
				r.Window = append(r.Window, diskTx{ID: e.id, Prev: e.prev, Fn: e.fn, Proposed: e.proposed, Key: e.key, At: e.at, Proposer: e.proposer})
			}
			if buf, err = appendDiskRecord(buf[:0], &r); err != nil {
				return err
			}
			if _, err := w.Write(buf); err != nil {
				return err
			}
		}
		if buf, err = appendDiskRecord(buf[:0], &diskRecord{Op: "end", Count: len(items)}); err != nil {
			return err
		}
		_, err = w.Write(buf)
		return err
	})
}

func (m *DiskManager) removeBefore(gen uint64) {
	snaps, logs, err := listGenerations(m.dir)
	if err != nil {
		return
	}
	for _, g := range snaps {
		if g < gen {
			os.Remove(filepath.Join(m.dir, genName("snap", g)))
		}
	}
	for _, g := range logs {
		if g < gen {
			os.Remove(filepath.Join(m.dir, genName("log", g)))
		}
	}
	syncDir(m.dir)
}

// Compact starts a new log and writes a snapshot now, and waits until the
// snapshot is on disk and the old log is gone (or ctx ends). The manager
// also compacts by itself past CompactAfterBytes; this is for tests and
// tools.
func (m *DiskManager) Compact(ctx context.Context) error {
	for {
		if err := m.waitCompaction(ctx); err != nil {
			return err
		}
		got := make(chan rotation, 1)
		// A record with no bytes: the committer sees the request after the
		// batch it is in is committed, so the snapshot holds everything
		// queued before this call.
		p := &diskPending{done: make(chan error, 1), commit: func() { m.wantRotate = got }}
		if err := m.enqueue(p); err != nil {
			return err
		}
		if err := <-p.done; err != nil {
			return err
		}
		r := <-got
		if r.busy {
			continue // an automatic compaction started first; wait for it, then ours
		}
		if r.err != nil {
			return r.err
		}
		select {
		case <-r.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		m.cmu.Lock()
		err := m.snapErr
		m.cmu.Unlock()
		return err
	}
}

// rotation answers a Compact's request.
type rotation struct {
	busy bool          // a compaction was running
	done chan struct{} // closed when the snapshot writer ends
	err  error
}

// waitCompaction waits for a running compaction to end.
func (m *DiskManager) waitCompaction(ctx context.Context) error {
	m.cmu.Lock()
	done := m.snapDone
	m.cmu.Unlock()
	if done == nil {
		return nil
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close stops the manager after the changes already queued are on disk.
// Calls after it fail.
func (m *DiskManager) Close() error {
	m.cmu.Lock()
	if m.closing {
		m.cmu.Unlock()
		return nil
	}
	m.closing = true
	m.cmu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
	m.wg.Wait()
	err := m.logf.Close()
	if m.lock != nil {
		m.lock.Close() // releases the directory
	}
	return err
}

// Dir returns the manager's directory.
func (m *DiskManager) Dir() string { return m.dir }

func (m *DiskManager) newID() string {
	return m.prefix + "-" + strconv.FormatUint(m.seq.Add(1), 36)
}

// commitChange queues rec and waits for it to be on disk; commit runs on
// the committer after the fsync.
func (m *DiskManager) commitChange(rec []byte, commit func()) (chan error, error) {
	p := &diskPending{rec: rec, commit: commit, done: make(chan error, 1)}
	if err := m.enqueue(p); err != nil {
		return nil, err
	}
	return p.done, nil
}

// change writes a record for the item whose head lock the caller holds:
// it queues r, moves the head (advance) so the next change builds on it,
// unlocks the head and waits until r is on disk. commit runs on the
// committer after the fsync, under the item's committed lock. On a failure
// before r is queued the head stays and the error is returned.
func (m *DiskManager) change(it *diskItem, r *diskRecord, advance, commit func()) error {
	rec, err := appendDiskRecord(nil, r)
	var done chan error
	if err == nil {
		done, err = m.commitChange(rec, func() {
			it.smu.Lock()
			commit()
			it.smu.Unlock()
		})
	}
	if err != nil {
		it.hmu.Unlock()
		return err
	}
	advance()
	it.hmu.Unlock()
	return <-done
}

// Create adds a share data item with an initial state (valid JSON; nil
// means null) and its functions, and returns once it is on disk.
func (m *DiskManager) Create(ctx context.Context, shareDataID string, state json.RawMessage, fns ...Function) error {
	st, err := normalizeState(state)
	if err != nil {
		return err
	}
	rec, err := appendDiskRecord(nil, &diskRecord{Op: "create", ID: shareDataID, State: st})
	if err != nil {
		return err
	}
	it := &diskItem{hState: st, fns: make(map[string]Function)}
	for _, fn := range fns {
		if fn.ID != "" {
			it.fns[fn.ID] = fn
		}
	}
	m.mu.Lock()
	if old := m.items[shareDataID]; old != nil {
		old.hmu.Lock()
		removed := old.hRemoved
		old.hmu.Unlock()
		if !removed {
			m.mu.Unlock()
			return fmt.Errorf("%w: %s", ErrShareDataExists, quoteForError(shareDataID))
		}
	}
	done, err := m.commitChange(rec, func() {
		it.smu.Lock()
		it.live, it.state = true, st
		it.smu.Unlock()
	})
	if err == nil {
		m.items[shareDataID] = it
	}
	m.mu.Unlock()
	if err != nil {
		return err
	}
	return <-done
}

// AddFunction registers fn on the share data (again after an open: see
// DiskManager). A function with an empty ID is refused.
func (m *DiskManager) AddFunction(shareDataID string, fn Function) error {
	if fn.ID == "" || fn.Apply == nil {
		return errors.New("realtime: a function needs an ID and Apply")
	}
	it, err := m.lockHead(shareDataID)
	if err != nil {
		return err
	}
	defer it.hmu.Unlock()
	it.fns[fn.ID] = fn
	return nil
}

// Function returns the function registered under functionID.
func (m *DiskManager) Function(shareDataID, functionID string) (Function, bool) {
	it, err := m.lockHead(shareDataID)
	if err != nil {
		return Function{}, false
	}
	defer it.hmu.Unlock()
	fn, ok := it.fns[functionID]
	return fn, ok
}

// lockHead returns the item with its head locked, or an error matching
// ErrUnknownShareData.
func (m *DiskManager) lockHead(id string) (*diskItem, error) {
	m.mu.RLock()
	it := m.items[id]
	m.mu.RUnlock()
	if it == nil {
		return nil, fmt.Errorf("%w %s", ErrUnknownShareData, quoteForError(id))
	}
	it.hmu.Lock()
	if it.hRemoved {
		it.hmu.Unlock()
		return nil, fmt.Errorf("%w %s", ErrUnknownShareData, quoteForError(id))
	}
	return it, nil
}

// Snapshot implements Manager: the state on disk, which every listener
// has heard of.
func (m *DiskManager) Snapshot(ctx context.Context, shareDataID string) (Snapshot, error) {
	m.mu.RLock()
	it := m.items[shareDataID]
	m.mu.RUnlock()
	if it != nil {
		it.smu.Lock()
		defer it.smu.Unlock()
		if it.live {
			return Snapshot{State: it.state, LastTransactionID: it.last, Version: it.version}, nil
		}
	}
	return Snapshot{}, fmt.Errorf("%w %s", ErrUnknownShareData, quoteForError(shareDataID))
}

// Apply implements Manager. fn runs under the item's head lock, so the
// transactions of one item are computed one at a time, each on the one
// before; Apply returns once its transaction is on disk. ctx is passed to
// fn; once the transaction is queued, Apply waits for the disk whatever
// ctx does, since returning early would leave the caller unsure whether it
// was applied.
func (m *DiskManager) Apply(ctx context.Context, shareDataID string, fn Function, proposed json.RawMessage) (*Transaction, error) {
	it, proposed, err := m.lockProposal(shareDataID, fn, proposed)
	if err != nil {
		return nil, err
	}
	next, err := runFunction(ctx, fn, it.hState, proposed)
	if err != nil {
		it.hmu.Unlock()
		return nil, err
	}
	return m.applyHead(it, shareDataID, fn, proposed, next, nil, nil, "")
}

// ApplyKeyed implements KeyedApplier. The key is written with its
// transaction, so the window of keys survives a restart or a crash with
// the replay window it is part of (after a restart, the keys older than
// the replay window's oldest transaction are forgotten, and retries are
// answered ErrOutcomeUnknown while such keys may be younger than
// KeyWindowAge). A repeat waits until the first one's transaction is on
// disk before it answers. Refusals are remembered in memory only: after a
// restart a retried refusal is decided again.
func (m *DiskManager) ApplyKeyed(ctx context.Context, shareDataID string, fn Function, proposed json.RawMessage, key string, retry bool) (*Transaction, error) {
	it, proposed, err := m.lockProposal(shareDataID, fn, proposed)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	proposer := ProposerFromContext(ctx)
	var w *keyWindow
	for {
		// Again after a wait: the head may be a new item's.
		if it.hKeys == nil {
			it.hKeys = newKeyWindows()
		}
		w = it.hKeys.window(proposer, now)
		e := w.lookup(key, now)
		if e == nil {
			break
		}
		if e.durable != nil && !isClosed(e.durable) {
			// The first one with this key is being written: its outcome
			// is known once it is on disk (or failed).
			it.hmu.Unlock()
			<-e.durable
			if it, err = m.lockHead(shareDataID); err != nil {
				return nil, err
			}
			continue
		}
		if e.err != nil {
			// Its write failed: nothing was applied, so this one is
			// applied as a first send.
			w.drop(e)
			break
		}
		it.hmu.Unlock()
		return e.remembered(shareDataID)
	}
	if retry && w.unsure(now) {
		it.hmu.Unlock()
		return nil, ErrOutcomeUnknown
	}
	next, err := runFunction(ctx, fn, it.hState, proposed)
	if err != nil {
		if refusalToRemember(err) {
			w.add(&keyEntry{key: key, refusal: err.Error(), at: now})
		}
		it.hmu.Unlock()
		return nil, err
	}
	e := &keyEntry{key: key, at: now, durable: make(chan struct{})}
	tx, err := m.applyHead(it, shareDataID, fn, proposed, next, e, w, proposer)
	e.err = err
	close(e.durable)
	return tx, err
}

// lockProposal checks a proposal and returns its item with the head
// locked, with the proposal compacted.
func (m *DiskManager) lockProposal(shareDataID string, fn Function, proposed json.RawMessage) (*diskItem, json.RawMessage, error) {
	proposed, err := checkProposal(fn, proposed)
	if err != nil {
		return nil, nil, err
	}
	it, err := m.lockHead(shareDataID)
	return it, proposed, err
}

// applyHead writes the transaction computed from the head, whose lock the
// caller holds (applyHead releases it), and returns once it is on disk.
// With e, it is a keyed proposal's: e is remembered as the head moves, so
// a repeat finds it at once (and waits for e.durable).
func (m *DiskManager) applyHead(it *diskItem, shareDataID string, fn Function, proposed, next json.RawMessage, e *keyEntry, w *keyWindow, proposer string) (*Transaction, error) {
	tx := &Transaction{ShareDataID: shareDataID, ID: m.newID(), PreviousID: it.hLast, FunctionID: fn.ID, ProposedData: proposed, State: next}
	// Every transaction keeps its time, so that after a restart the key
	// window knows how young the oldest transaction it still has is.
	rec := &diskRecord{Op: "tx", ID: shareDataID, Tx: tx.ID, Prev: tx.PreviousID, Fn: fn.ID, Proposed: proposed, State: next, At: time.Now().UnixNano()}
	if e != nil {
		e.txID, tx.IdempotencyKey = tx.ID, e.key
		rec.Key, rec.At, rec.Proposer = e.key, e.at.UnixNano(), proposer
	}
	v := it.hVersion + 1
	rec.V = v
	err := m.change(it, rec,
		func() {
			it.hState, it.hLast, it.hVersion = next, tx.ID, v
			if e != nil {
				w.add(e)
			}
		},
		func() {
			it.state, it.last, it.version = tx.State, tx.ID, v
			m.pushWindow(it, windowEntry{id: tx.ID, prev: tx.PreviousID, fn: tx.FunctionID, proposed: tx.ProposedData, key: rec.Key, at: rec.At, proposer: rec.Proposer})
			m.listeners.notify(Event{Kind: EventTransaction, ShareDataID: shareDataID, Version: v, Transaction: tx})
		})
	if err != nil {
		return nil, err
	}
	return tx, nil
}

// Update replaces the item's state outside the transaction flow, like
// MemoryManager.Update, and returns once that is on disk.
func (m *DiskManager) Update(ctx context.Context, shareDataID string, state json.RawMessage) error {
	st, err := normalizeState(state)
	if err != nil {
		return err
	}
	it, err := m.lockHead(shareDataID)
	if err != nil {
		return err
	}
	v := it.hVersion + 1
	return m.change(it, &diskRecord{Op: "update", ID: shareDataID, V: v, State: st},
		func() { it.hState, it.hVersion = st, v },
		func() {
			it.state, it.version = st, v
			m.listeners.notify(Event{Kind: EventUpdated, ShareDataID: shareDataID, Version: v, State: st})
		})
}

// Remove deletes the item, like MemoryManager.Remove, and returns once
// that is on disk.
func (m *DiskManager) Remove(ctx context.Context, shareDataID string) error {
	it, err := m.lockHead(shareDataID)
	if err != nil {
		return err
	}
	v := it.hVersion + 1
	err = m.change(it, &diskRecord{Op: "remove", ID: shareDataID, V: v},
		func() { it.hRemoved, it.hVersion = true, v },
		func() {
			it.live, it.version, it.window = false, v, nil
			m.listeners.notify(Event{Kind: EventRemoved, ShareDataID: shareDataID, Version: v})
		})
	if err != nil {
		return err
	}
	m.mu.Lock() // on disk and heard of: forget the item unless it was created again
	if m.items[shareDataID] == it {
		delete(m.items, shareDataID)
	}
	m.mu.Unlock()
	return nil
}

// Listen implements Manager. Listeners are called on the manager's
// committer goroutine, after the fsync, in log order, one event at a time.
func (m *DiskManager) Listen(fn func(Event)) (cancel func()) { return m.listeners.add(fn) }

// Append implements ReplayStore. It does nothing: the manager records its
// window itself, with every transaction it applies.
func (m *DiskManager) Append(ctx context.Context, shareDataID string, rec ReplayRecord) error {
	return nil
}

// Drop implements ReplayStore. It does nothing: removing an item drops its
// window.
func (m *DiskManager) Drop(ctx context.Context, shareDataID string) error { return nil }

// Replay implements ReplayStore from the manager's window, which a restart
// keeps.
func (m *DiskManager) Replay(ctx context.Context, shareDataID, since, until string) ([]ReplayRecord, error) {
	if since == until {
		return nil, nil
	}
	m.mu.RLock()
	it := m.items[shareDataID]
	m.mu.RUnlock()
	if it == nil {
		return nil, ErrReplayCursorNotFound
	}
	it.smu.Lock()
	defer it.smu.Unlock()
	w := it.window
	if n := m.opts.ReplayWindow; len(w) > n {
		// The slice is trimmed only when it doubles (amortised); the
		// window is exactly the last ReplayWindow transactions.
		w = w[len(w)-n:]
	}
	start, end, ok := windowSpan(len(w), func(i int) (string, string) { return w[i].id, w[i].prev }, since, until)
	if !ok {
		return nil, ErrReplayCursorNotFound
	}
	out := make([]ReplayRecord, 0, end-start)
	for i := start; i < end; i++ {
		e := &w[i]
		if e.msg == nil { // encoded once, at the first replay that needs it
			e.msg = (&TransactionMessage{ShareDataID: shareDataID, TransactionID: e.id, PreviousTransactionID: e.prev,
				FunctionID: e.fn, ProposedData: e.proposed, Replayed: true, IdempotencyKey: e.key}).AppendJSON(nil)
		}
		out = append(out, ReplayRecord{TransactionID: e.id, PreviousTransactionID: e.prev, Message: e.msg})
	}
	return out, nil
}
