//go:build !linux

package main

import "os/exec"

// dieWithParent: elsewhere than on Linux the children are ended by the
// tests' cleanups alone.
func dieWithParent(cmd *exec.Cmd) {}
