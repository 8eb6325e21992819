package realtime

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// This file is the DiskManager's storage format: checksummed records, the
// log and snapshot files they live in, and reading them back after a
// crash. It knows nothing of listeners or the commit pipeline
// (diskmanager.go).
//
// A record is an 8-byte header, the payload's length and its CRC-32C
// (both big-endian uint32), and the payload, one JSON object. A directory
// holds generations: snap-N is the state of every item when log-N began,
// and log-N the records since. Opening loads the newest snapshot and
// replays the logs from its generation on.

// maxDiskRecord bounds one record's payload: a length past it is
// corruption, not a record to allocate for.
const maxDiskRecord = 1 << 30

const diskHeaderSize = 8

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// diskRecord is the payload of every record. Op says which fields count:
//
//	create: ID, State                    an item was created (version 0)
//	tx:     ID, V, Tx, Prev, Fn, Proposed, State
//	update: ID, V, State
//	remove: ID, V
//	item:   ID, V, State, Last, Window   (snapshot files) one item
//	end:    Count                        (snapshot files) the last record
type diskRecord struct {
	Op       string          `json:"op"`
	ID       string          `json:"id,omitempty"`
	V        uint64          `json:"v,omitempty"`
	Tx       string          `json:"tx,omitempty"`
	Prev     string          `json:"prev,omitempty"`
	Fn       string          `json:"fn,omitempty"`
	Proposed json.RawMessage `json:"proposed,omitempty"`
	State    json.RawMessage `json:"state,omitempty"`
	Last     string          `json:"last,omitempty"`
	Window   []diskTx        `json:"window,omitempty"`
	Count    int             `json:"count,omitempty"`
	Key      string          `json:"key,omitempty"`      // a keyed proposal's idempotency key
	At       int64           `json:"at,omitempty"`       // when a keyed transaction was applied, Unix ns
	Proposer string          `json:"proposer,omitempty"` // a keyed proposal's proposer (WithProposer)
}

// diskTx is one transaction of a snapshot's replay window.
type diskTx struct {
	ID       string          `json:"id"`
	Prev     string          `json:"prev,omitempty"`
	Fn       string          `json:"fn,omitempty"`
	Proposed json.RawMessage `json:"proposed"`
	Key      string          `json:"key,omitempty"`
	At       int64           `json:"at,omitempty"`
	Proposer string          `json:"proposer,omitempty"`
}

// appendDiskRecord appends r, framed, to dst.
//
// The record is encoded here rather than by json.Marshal, which would
// rewrite the raw values (a state, a proposal): it escapes <, > and & as
// six bytes each and drops insignificant spaces, so a state would not come
// back after a restart as the bytes that were applied, and could grow six
// times on disk. Raw values are copied as they are, after checking that
// they are JSON (a record that would not read back is never written).
func appendDiskRecord(dst []byte, r *diskRecord) ([]byte, error) {
	payload, err := r.appendJSON(nil)
	if err != nil {
		return dst, err
	}
	if len(payload) > maxDiskRecord {
		return dst, fmt.Errorf("realtime: disk manager: a record of %d bytes is over the %d-byte limit", len(payload), maxDiskRecord)
	}
	var hdr [diskHeaderSize]byte
	binary.BigEndian.PutUint32(hdr[0:4], uint32(len(payload)))
	binary.BigEndian.PutUint32(hdr[4:8], crc32.Checksum(payload, crcTable))
	dst = append(dst, hdr[:]...)
	return append(dst, payload...), nil
}

// errNotJSON is appendJSON's error for a raw value that is not JSON.
var errNotJSON = errors.New("realtime: disk manager: a state or proposal is not valid JSON")

// appendJSON appends r as the JSON object that scanRecords decodes, with
// the fields of diskRecord's tags, empty ones left out.
func (r *diskRecord) appendJSON(dst []byte) ([]byte, error) {
	dst = append(dst, `{"op":`...)
	dst = appendJSONString(dst, r.Op)
	dst = appendOptString(dst, "id", r.ID)
	if r.V != 0 {
		dst = strconv.AppendUint(append(dst, `,"v":`...), r.V, 10)
	}
	dst = appendOptString(dst, "tx", r.Tx)
	dst = appendOptString(dst, "prev", r.Prev)
	dst = appendOptString(dst, "fn", r.Fn)
	var err error
	if len(r.Proposed) > 0 {
		if dst, err = appendCheckedRaw(dst, "proposed", r.Proposed); err != nil {
			return dst, err
		}
	}
	if len(r.State) > 0 {
		if dst, err = appendCheckedRaw(dst, "state", r.State); err != nil {
			return dst, err
		}
	}
	dst = appendOptString(dst, "last", r.Last)
	if len(r.Window) > 0 {
		dst = append(dst, `,"window":[`...)
		for i := range r.Window {
			w := &r.Window[i]
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"id":`...)
			dst = appendJSONString(dst, w.ID)
			dst = appendOptString(dst, "prev", w.Prev)
			dst = appendOptString(dst, "fn", w.Fn)
			proposed := w.Proposed
			if len(proposed) == 0 {
				proposed = json.RawMessage("null")
			}
			if dst, err = appendCheckedRaw(dst, "proposed", proposed); err != nil {
				return dst, err
			}
			dst = appendOptString(dst, "key", w.Key)
			if w.At != 0 {
				dst = strconv.AppendInt(append(dst, `,"at":`...), w.At, 10)
			}
			dst = appendOptString(dst, "proposer", w.Proposer)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	if r.Count != 0 {
		dst = strconv.AppendInt(append(dst, `,"count":`...), int64(r.Count), 10)
	}
	dst = appendOptString(dst, "key", r.Key)
	if r.At != 0 {
		dst = strconv.AppendInt(append(dst, `,"at":`...), r.At, 10)
	}
	dst = appendOptString(dst, "proposer", r.Proposer)
	return append(dst, '}'), nil
}

// appendOptString appends ,"name":"value" unless value is empty.
func appendOptString(dst []byte, name, value string) []byte {
	if value == "" {
		return dst
	}
	return appendStringField(dst, name, value)
}

// appendCheckedRaw appends ,"name":raw after checking that raw is JSON.
func appendCheckedRaw(dst []byte, name string, raw json.RawMessage) ([]byte, error) {
	if !json.Valid(raw) {
		return dst, errNotJSON
	}
	return appendRawField(dst, name, raw), nil
}

// CorruptError reports a DiskManager directory that cannot be opened as it
// is: a record that fails its checksum or does not follow from the ones
// before it, anywhere but at the end of the newest log (where a crash
// mid-write leaves a torn record, which is cut off instead).
type CorruptError struct {
	File   string // the file's path
	Offset int64  // where the bad record starts
	Reason string // what is wrong with it
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("realtime: disk manager: %s at offset %d: %s; refusing to open rather than serve a wrong state", e.File, e.Offset, e.Reason)
}

// scanResult is what scanRecords read from one file.
type scanResult struct {
	good int64 // the offset after the last whole, valid record
	// bad is set when a record at good fails: torn says the failure
	// reaches the end of the file (a crash mid-write), so cutting the
	// file at good loses only what was never acknowledged.
	bad  string
	torn bool
}

// scanRecords reads the records of data in order, calling fn for each.
// It stops at the first record that is cut short or fails its checksum or
// its JSON, and says whether the rest of the file is that record alone (or
// zeros, which a file system may leave past the last write after a crash).
// An error from fn stops the scan and is returned.
func scanRecords(data []byte, fn func(off int64, r *diskRecord) error) (scanResult, error) {
	off := 0
	for off < len(data) {
		rest := data[off:]
		if len(rest) < diskHeaderSize {
			return scanResult{good: int64(off), bad: "a record header cut short", torn: true}, nil
		}
		n := binary.BigEndian.Uint32(rest[0:4])
		sum := binary.BigEndian.Uint32(rest[4:8])
		if n == 0 && sum == 0 && allZero(rest) {
			return scanResult{good: int64(off), bad: "zeros after the last record", torn: true}, nil
		}
		if n > maxDiskRecord {
			return scanResult{good: int64(off), bad: "a record length of " + strconv.FormatUint(uint64(n), 10) + " bytes", torn: false}, nil
		}
		if int(n) > len(rest)-diskHeaderSize { // len(rest) >= header: cannot underflow
			return scanResult{good: int64(off), bad: "a record cut short", torn: true}, nil
		}
		end := diskHeaderSize + int(n)
		payload := rest[diskHeaderSize:end]
		if crc32.Checksum(payload, crcTable) != sum {
			return scanResult{good: int64(off), bad: "a record that fails its checksum", torn: end == len(rest)}, nil
		}
		var r diskRecord
		if err := json.Unmarshal(payload, &r); err != nil {
			return scanResult{good: int64(off), bad: "a record that is not valid JSON: " + err.Error(), torn: false}, nil
		}
		if err := fn(int64(off), &r); err != nil {
			return scanResult{}, err
		}
		off += end
	}
	return scanResult{good: int64(off)}, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Generation files: snap-N and log-N, N in 16 hex digits so that names
// sort by generation.
func genName(kind string, gen uint64) string {
	return fmt.Sprintf("%s-%016x", kind, gen)
}

// listGenerations returns the generations of the snapshots and logs in
// dir, ascending, and removes the temporary files an interrupted
// compaction left.
func listGenerations(dir string) (snaps, logs []uint64, err error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range entries {
		name := e.Name()
		if strings.HasSuffix(name, ".tmp") {
			if err := os.Remove(filepath.Join(dir, name)); err != nil {
				return nil, nil, err
			}
			continue
		}
		kind, hex, ok := strings.Cut(name, "-")
		if !ok || len(hex) != 16 {
			continue
		}
		gen, perr := strconv.ParseUint(hex, 16, 64)
		if perr != nil {
			continue
		}
		switch kind {
		case "snap":
			snaps = append(snaps, gen)
		case "log":
			logs = append(logs, gen)
		}
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i] < snaps[j] })
	sort.Slice(logs, func(i, j int) bool { return logs[i] < logs[j] })
	return snaps, logs, nil
}

// writeFileSynced writes data to path through a temporary file, fsyncs it,
// renames it into place and fsyncs the directory, so path holds either
// nothing or all of data after a crash.
func writeFileSynced(path string, write func(w io.Writer) error) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = write(f)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncDir makes a directory's entries (a created, renamed or removed
// file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, os.ErrInvalid) {
		return nil // file systems that cannot sync a directory
	}
	return err
}
