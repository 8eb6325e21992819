package realtime

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
)

// This file turns a panic in an application's function into an error: a
// bug in one function must cost its proposer a refusal, not every
// connection the process serves.

// ErrFunctionPanicked is matched (errors.Is) by the error of a proposal
// whose function panicked. It is a failure, not a refusal: the server
// logs it with its stack, answers the proposer with a fixed text and code
// "internal-error", and a keyed proposal's key is not remembered.
var ErrFunctionPanicked = errors.New("realtime: function panicked")

// PanicError is a panic recovered from a function's Apply (Function.Call).
type PanicError struct {
	FunctionID string // the function's ID
	Value      any    // what it panicked with
	Stack      []byte // the goroutine's stack at the panic
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("realtime: function %s panicked: %v", quoteForError(e.FunctionID), e.Value)
}

// Is reports whether target is ErrFunctionPanicked.
func (e *PanicError) Is(target error) bool { return target == ErrFunctionPanicked }

// Call runs f.Apply, returning a panic in it as a *PanicError (matching
// ErrFunctionPanicked) instead of unwinding the caller's goroutine. The
// managers of this package and redisrt call functions through it; a
// manager of your own should too.
func (f Function) Call(ctx context.Context, current, proposed json.RawMessage) (next json.RawMessage, err error) {
	defer func() {
		if r := recover(); r != nil {
			next, err = nil, &PanicError{FunctionID: f.ID, Value: r, Stack: debug.Stack()}
		}
	}()
	return f.Apply(ctx, current, proposed)
}
