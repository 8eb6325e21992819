package realtime

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestWriteLockHandsOverInOrder: waiters get the lock in the order they
// came, one at a time.
func TestWriteLockHandsOverInOrder(t *testing.T) {
	var l writeLock
	if l.lock(context.Background(), nil, nil) != lockTaken {
		t.Fatal("free lock not taken")
	}
	if l.tryLock() {
		t.Fatal("tryLock took a held lock")
	}
	const n = 5
	got := make(chan int, n)
	for i := 0; i < n; i++ {
		go func() {
			l.lock(context.Background(), nil, nil)
			got <- i
			l.unlock()
		}()
		waitFor(t, func() bool { l.mu.Lock(); defer l.mu.Unlock(); return len(l.waiters) == i+1 })
	}
	l.unlock()
	for i := 0; i < n; i++ {
		if v := <-got; v != i {
			t.Fatalf("waiter %d got the lock in turn %d", v, i)
		}
	}
	if !l.tryLock() {
		t.Fatal("lock not free after every waiter unlocked")
	}
	if l.waiters != nil {
		t.Fatal("an idle lock keeps its waiter slice")
	}
}

// TestWriteLockGivesUp: a wait ends with its reason when the context ends,
// the connection closes or the timeout fires, and leaves the lock usable.
func TestWriteLockGivesUp(t *testing.T) {
	var l writeLock
	l.tryLock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if why := l.lock(ctx, nil, nil); why != lockCanceled {
		t.Fatalf("canceled wait: %d", why)
	}
	closed := make(chan struct{})
	close(closed)
	if why := l.lock(context.Background(), closed, nil); why != lockClosed {
		t.Fatalf("closed wait: %d", why)
	}
	timeout := make(chan time.Time, 1)
	timeout <- time.Time{}
	if why := l.lock(context.Background(), nil, timeout); why != lockTimedOut {
		t.Fatalf("timed-out wait: %d", why)
	}
	if len(l.waiters) != 0 {
		t.Fatalf("%d waiters left behind", len(l.waiters))
	}
	l.unlock()
	if !l.tryLock() {
		t.Fatal("lock not free after its holder unlocked")
	}
}

// TestWriteLockRacingCancel: a waiter that gives up while the lock is
// handed to it passes it on, so it is never lost and never held twice.
func TestWriteLockRacingCancel(t *testing.T) {
	var l writeLock
	var holders, held atomic.Int32
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				ctx, cancel := context.WithCancel(context.Background())
				if i%3 == 0 {
					go cancel()
				}
				why := l.lock(ctx, nil, time.After(10*time.Second))
				if why == lockTimedOut {
					t.Error("lock lost: a wait timed out")
					cancel()
					return
				}
				if why == lockTaken {
					if holders.Add(1) > 1 {
						t.Error("two holders at once")
					}
					held.Add(1)
					runtime.Gosched() // let others try while it is held
					holders.Add(-1)
					l.unlock()
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	if !l.tryLock() {
		t.Fatal("lock lost: not free after every goroutine finished")
	}
	if held.Load() == 0 {
		t.Fatal("no goroutine ever took the lock")
	}
}

// TestWriteLockHandOverToCanceledWaiter: when the lock is handed to a
// waiter whose context ended at that moment, the waiter reports the
// cancellation and passes the lock on, so it is not lost.
func TestWriteLockHandOverToCanceledWaiter(t *testing.T) {
	var l writeLock
	l.tryLock()
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan int)
	go func() { res <- l.lock(ctx, nil, nil) }()
	waitFor(t, func() bool { l.mu.Lock(); defer l.mu.Unlock(); return len(l.waiters) == 1 })
	// Hand the lock over as unlock does, with the waiter's context already
	// ended and its channel not yet closed, so its wait can only end by the
	// cancellation.
	l.mu.Lock()
	cancel()
	ch := l.waiters[0]
	l.waiters = nil
	l.mu.Unlock()
	if why := <-res; why != lockCanceled {
		t.Fatalf("wait ended with %d, want canceled", why)
	}
	close(ch)
	if !l.tryLock() {
		t.Fatal("the lock handed to a canceled waiter was lost")
	}
}
