package realtime

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestWorkspaceReplacesReleasedVersions: a nested module requires a
// released version of another module of this repository, and go.work must
// replace that version with the directory. Without it the go command
// fetches the released go.mod to build the module graph, which fails on a
// fresh machine (an empty module cache) before the release is published.
func TestWorkspaceReplacesReleasedVersions(t *testing.T) {
	work, err := os.ReadFile("go.work")
	if err != nil {
		t.Fatal(err)
	}
	var uses []string
	replaced := map[string]bool{} // "path version"
	block := ""
	for _, line := range strings.Split(string(work), "\n") {
		line = strings.TrimSpace(line)
		if i := strings.Index(line, "//"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		switch {
		case line == "":
			continue
		case strings.HasSuffix(line, "("):
			block = strings.TrimSpace(strings.TrimSuffix(line, "("))
			continue
		case line == ")":
			block = ""
			continue
		}
		f := strings.Fields(line)
		if block == "" && len(f) > 1 {
			block, f = f[0], f[1:]
			if block == "use" {
				uses = append(uses, f[0])
			} else if block == "replace" && len(f) >= 2 {
				replaced[f[0]+" "+f[1]] = true
			}
			block = ""
			continue
		}
		switch block {
		case "use":
			uses = append(uses, f[0])
		case "replace":
			if len(f) >= 2 {
				replaced[f[0]+" "+f[1]] = true
			}
		}
	}
	paths := map[string]bool{}
	for _, dir := range uses {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err != nil {
			t.Fatal(err)
		}
		first, _, _ := strings.Cut(string(b), "\n")
		paths[strings.TrimPrefix(first, "module ")] = true
	}
	if !paths["github.com/degenerate/realtime"] {
		t.Fatalf("go.work does not use the root module: %v", uses)
	}
	checked := 0
	for _, dir := range uses {
		b, _ := os.ReadFile(filepath.Join(dir, "go.mod"))
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
			if len(f) < 2 || !paths[f[0]] {
				continue
			}
			checked++
			if !replaced[f[0]+" "+f[1]] {
				t.Errorf("%s/go.mod requires %s %s, which go.work does not replace with its directory", dir, f[0], f[1])
			}
		}
	}
	if checked == 0 {
		t.Error("no nested module requires a module of the workspace")
	}
}

// TestLicense: the repository and the npm package both carry the MIT
// license, as LICENSE files and in js/package.json.
func TestLicense(t *testing.T) {
	for _, p := range []string{"LICENSE", "js/LICENSE"} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(b), "MIT License\n") || !strings.Contains(string(b), "WITHOUT WARRANTY OF ANY KIND") {
			t.Errorf("%s is not the MIT license", p)
		}
	}
	pkg, err := os.ReadFile("js/package.json")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(pkg), `"license": "MIT"`) || !strings.Contains(string(pkg), `"LICENSE"`) {
		t.Error(`js/package.json does not declare "license": "MIT" and ship LICENSE`)
	}
}

// TestWorkSumIsCurrent: go.work.sum holds every checksum the go command
// wants for the workspace's module graph, so that a newcomer's first
// go doc or go list does not rewrite a committed file. It runs go list -m
// all on a copy of the workspace's go.work and module files.
func TestWorkSumIsCurrent(t *testing.T) {
	dir := t.TempDir()
	copyFile := func(rel string) {
		b, err := os.ReadFile(rel)
		if err != nil {
			if os.IsNotExist(err) {
				return
			}
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, rel), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	work, err := os.ReadFile("go.work")
	if err != nil {
		t.Fatal(err)
	}
	copyFile("go.work")
	copyFile("go.work.sum")
	inUse := false
	for _, line := range strings.Split(string(work), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "use ("):
			inUse = true
		case inUse && line == ")":
			inUse = false
		case inUse && line != "":
			copyFile(filepath.Join(line, "go.mod"))
			copyFile(filepath.Join(line, "go.sum"))
		}
	}
	cmd := exec.Command("go", "list", "-m", "all")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK="+filepath.Join(dir, "go.work"), "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go list -m all: %v\n%s", err, out)
	}
	before, _ := os.ReadFile("go.work.sum")
	after, _ := os.ReadFile(filepath.Join(dir, "go.work.sum"))
	if string(before) != string(after) {
		t.Fatalf("go list -m all rewrites go.work.sum; commit what it writes:\n%s", after)
	}
}
