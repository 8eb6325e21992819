package realtime

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuickStart builds and runs the Quick start of README.md as a user
// would paste it: the first Go block of that section is a whole main.go,
// in a module of its own that requires this one, and it prints what the
// README says it prints.
func TestQuickStart(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "\n## Quick start\n")
	if !ok {
		t.Fatal("README.md has no Quick start section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	_, prog, ok := strings.Cut(section, "```go\n")
	prog, _, ok2 := strings.Cut(prog, "```")
	if !ok || !ok2 || !strings.Contains(prog, "package main") {
		t.Fatal("the Quick start's first Go block is not a main package")
	}
	_, want, ok := strings.Cut(section, "It prints:\n\n```\n")
	want, _, _ = strings.Cut(want, "```")
	if !ok || want == "" {
		t.Fatal("the Quick start does not say what the program prints")
	}

	root, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sum, err := os.ReadFile("go.sum")
	if err != nil {
		t.Fatal(err)
	}
	gomod := "module quickstart\n\ngo 1.26\n\nrequire github.com/degenerate/realtime v0.0.0\n\nreplace github.com/degenerate/realtime => " + root + "\n"
	for name, data := range map[string][]byte{"main.go": []byte(prog), "go.mod": []byte(gomod), "go.sum": sum} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", ".")
	cmd.Dir = dir
	// The root module's dependencies are in the module cache already (this
	// test was built with them); nothing is fetched.
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOPROXY=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go run of the Quick start: %v\n%s", err, out)
	}
	if string(out) != want {
		t.Fatalf("the Quick start printed\n%s\nthe README says\n%s", out, want)
	}
}
