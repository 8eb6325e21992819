package realtime

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// TestServerUsesManagersReplayWindow: NewServer over a DiskManager, with
// no ReplayStore given, replays from the manager's window, so a client
// whose cursor is from before a restart is replayed what it missed (it
// used to get an in-memory window, empty after the restart, and
// replay-cursor-not-found).
func TestServerUsesManagersReplayWindow(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	opts := &DiskManagerOptions{Logger: slog.New(slog.DiscardHandler)}
	dm, err := OpenDiskManager(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := dm.Create(ctx, "doc", json.RawMessage(`0`), testFunctions[0]); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i := 1; i <= 5; i++ {
		tx, err := dm.Apply(ctx, "doc", testFunctions[0], json.RawMessage(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, tx.ID)
	}
	dm.Close()

	// The restart: a new manager and a server given nothing but it.
	dm, err = OpenDiskManager(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer dm.Close()
	srv := NewServer(dm, nil)
	hs := httptest.NewServer(srv)
	defer hs.Close()
	defer srv.Shutdown(ctx)
	c := dialRT(t, "ws"+strings.TrimPrefix(hs.URL, "http"), nil)
	c.send(&SubscribeMessage{ShareDataID: "doc", Since: ids[1], HasSince: true})
	if st := nextAs[*StateMessage](c); st.LastTransactionID != ids[4] {
		t.Fatalf("state at %s, want %s", st.LastTransactionID, ids[4])
	}
	for _, want := range ids[2:] {
		switch m := c.next().(type) {
		case *TransactionMessage:
			if m.TransactionID != want || !m.Replayed {
				t.Fatalf("replayed %s (replayed %v), want %s", m.TransactionID, m.Replayed, want)
			}
		default:
			t.Fatalf("got %s, want the replay of %s", m.AppendJSON(nil), want)
		}
	}
}
