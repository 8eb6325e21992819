package realtime

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"strings"
	"testing"
)

// TestExportedNamesDocumented fails for any exported name of the package
// (type, function, method, constant, variable, struct field) without a doc
// comment, so that go doc shows one for each.
func TestExportedNamesDocumented(t *testing.T) {
	fset := token.NewFileSet()
	pkgs, err := parser.ParseDir(fset, ".", func(fi fs.FileInfo) bool {
		return !strings.HasSuffix(fi.Name(), "_test.go")
	}, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	miss := func(pos token.Pos, name string) {
		missing = append(missing, fset.Position(pos).String()+": "+name)
	}
	for _, f := range pkgs["realtime"].Files {
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.FuncDecl:
				if !d.Name.IsExported() || d.Doc != nil {
					continue
				}
				if d.Recv != nil {
					recv := d.Recv.List[0].Type
					if star, ok := recv.(*ast.StarExpr); ok {
						recv = star.X
					}
					if id, ok := recv.(*ast.Ident); ok && !id.IsExported() {
						continue // a method of an unexported type
					}
					// Methods that implement a documented interface method
					// (Error, String, MessageType, AppendJSON, Is, Unwrap)
					// are described by the interface.
					switch d.Name.Name {
					case "Error", "String", "MessageType", "AppendJSON", "Is", "Unwrap", "Append", "Replay", "Drop", "Publish", "Attach", "Snapshot", "Apply", "Listen":
						continue
					}
				}
				miss(d.Pos(), d.Name.Name)
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					switch s := spec.(type) {
					case *ast.TypeSpec:
						if !s.Name.IsExported() {
							continue
						}
						if s.Doc == nil && d.Doc == nil {
							miss(s.Pos(), s.Name.Name)
						}
						if st, ok := s.Type.(*ast.StructType); ok {
							for _, fld := range st.Fields.List {
								for _, n := range fld.Names {
									if n.IsExported() && fld.Doc == nil && fld.Comment == nil {
										miss(n.Pos(), s.Name.Name+"."+n.Name)
									}
								}
							}
						}
					case *ast.ValueSpec:
						for _, n := range s.Names {
							if n.IsExported() && s.Doc == nil && s.Comment == nil && d.Doc == nil {
								miss(n.Pos(), n.Name)
							}
						}
					}
				}
			}
		}
	}
	if len(missing) > 0 {
		t.Fatalf("exported names without a doc comment:\n%s", strings.Join(missing, "\n"))
	}
}

// TestServersPeopleCopyHaveLimits: the servers in the README and the
// examples are what users copy, so each http.Server there sets the
// timeouts and header bound an exposed server needs, and none is started
// with the bare http.ListenAndServe (which has no timeouts at all).
func TestServersPeopleCopyHaveLimits(t *testing.T) {
	required := []string{"ReadHeaderTimeout", "IdleTimeout", "MaxHeaderBytes"}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(readme), "```go\n")[1:]
	servers := 0
	for _, b := range blocks {
		code, _, _ := strings.Cut(b, "```")
		if strings.Contains(code, "http.ListenAndServe(") || strings.Contains(code, "http.Serve(") {
			t.Errorf("README code starts a server without timeouts:\n%s", code)
		}
		for _, lit := range strings.Split(code, "&http.Server{")[1:] {
			servers++
			lit, _, _ = strings.Cut(lit, "\n}")
			for _, f := range required {
				if !strings.Contains(lit, f+":") {
					t.Errorf("README: an http.Server without %s:\n%s", f, lit)
				}
			}
		}
	}
	if servers == 0 {
		t.Error("README: the quick start shows no http.Server")
	}

	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "example_test.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	servers = 0
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.CompositeLit:
			if sel, ok := n.Type.(*ast.SelectorExpr); ok && sel.Sel.Name == "Server" {
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == "http" {
					servers++
					set := map[string]bool{}
					for _, e := range n.Elts {
						if kv, ok := e.(*ast.KeyValueExpr); ok {
							set[kv.Key.(*ast.Ident).Name] = true
						}
					}
					for _, r := range required {
						if !set[r] {
							t.Errorf("%s: an http.Server without %s", fset.Position(n.Pos()), r)
						}
					}
				}
			}
		case *ast.CallExpr:
			if sel, ok := n.Fun.(*ast.SelectorExpr); ok {
				if x, ok := sel.X.(*ast.Ident); ok && x.Name == "http" && (sel.Sel.Name == "ListenAndServe" || sel.Sel.Name == "Serve") {
					t.Errorf("%s: http.%s has no timeouts", fset.Position(n.Pos()), sel.Sel.Name)
				}
			}
		}
		return true
	})
	if servers < 2 {
		t.Errorf("the package example and the JWT example should serve through an http.Server; found %d", servers)
	}
}
