// Command modproxy writes a module proxy directory (the layout GOPROXY=file://
// reads) holding one version of a module of this repository, made from a
// git tag exactly as the go command makes it from a VCS checkout. It lets a
// release be checked offline before it is pushed: the nested modules are
// built with GOWORK=off against the root module as a user would download
// it.
//
// Usage:
//
//	modproxy -tag v0.1.0 -out /tmp/proxy            # the root module
//	modproxy -tag redisrt/v0.1.0 -out /tmp/proxy    # a nested module
//
// Then, in a nested module:
//
//	GOWORK=off GOFLAGS=-mod=mod GONOSUMDB=github.com/degenerate/realtime \
//	GOPROXY=file:///tmp/proxy,file://$(go env GOMODCACHE)/cache/download \
//	GOMODCACHE=$(mktemp -d) go build ./...
//
// The second proxy entry serves the other dependencies from the local
// module cache, so nothing is fetched from the network.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/modfile"
	"golang.org/x/mod/module"
	modzip "golang.org/x/mod/zip"
)

func main() {
	repo := flag.String("repo", ".", "the repository's root directory")
	tag := flag.String("tag", "", "the tag to publish: vX.Y.Z for the root module, DIR/vX.Y.Z for the module in DIR")
	out := flag.String("out", "", "the proxy directory to write into (created if missing)")
	flag.Parse()
	if *tag == "" || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	if err := publish(*repo, *tag, *out); err != nil {
		fmt.Fprintln(os.Stderr, "modproxy:", err)
		os.Exit(1)
	}
}

func publish(repo, tag, out string) error {
	root, err := git(repo, "rev-parse", "--show-toplevel")
	if err != nil {
		return err
	}
	root = strings.TrimSpace(root)
	subdir, version := "", tag
	if i := strings.LastIndex(tag, "/"); i >= 0 {
		subdir, version = tag[:i], tag[i+1:]
	}
	rev, err := git(root, "rev-list", "-n", "1", tag)
	if err != nil {
		return fmt.Errorf("tag %s: %w", tag, err)
	}
	rev = strings.TrimSpace(rev)
	gomod, err := git(root, "show", rev+":"+path.Join(subdir, "go.mod"))
	if err != nil {
		return fmt.Errorf("no go.mod at %s in %s: %w", subdir, tag, err)
	}
	f, err := modfile.ParseLax("go.mod", []byte(gomod), nil)
	if err != nil || f.Module == nil {
		return fmt.Errorf("go.mod of %s: cannot read its module path: %v", tag, err)
	}
	mv := module.Version{Path: f.Module.Mod.Path, Version: version}
	if err := module.Check(mv.Path, mv.Version); err != nil {
		return err
	}
	when, err := git(root, "log", "-1", "--format=%cI", rev)
	if err != nil {
		return err
	}
	t, err := time.Parse(time.RFC3339, strings.TrimSpace(when))
	if err != nil {
		return err
	}

	escaped, err := module.EscapePath(mv.Path)
	if err != nil {
		return err
	}
	dir := filepath.Join(out, filepath.FromSlash(escaped), "@v")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var zbuf bytes.Buffer
	if err := modzip.CreateFromVCS(&zbuf, mv, root, rev, subdir); err != nil {
		return fmt.Errorf("zip of %s: %w", tag, err)
	}
	info, _ := json.Marshal(struct {
		Version string
		Time    time.Time
	}{version, t.UTC()})
	files := map[string][]byte{
		version + ".zip":  zbuf.Bytes(),
		version + ".mod":  []byte(gomod),
		version + ".info": info,
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return err
		}
	}
	list := filepath.Join(dir, "list")
	old, _ := os.ReadFile(list)
	if !bytes.Contains(append([]byte("\n"), old...), []byte("\n"+version+"\n")) {
		if err := os.WriteFile(list, append(old, version+"\n"...), 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("%s@%s from %s (%s) -> %s\n", mv.Path, version, tag, rev[:12], dir)
	return nil
}

func git(dir string, args ...string) (string, error) {
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(b), nil
}
