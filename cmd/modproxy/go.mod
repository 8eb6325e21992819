module github.com/degenerate/realtime/cmd/modproxy

go 1.26.8

require golang.org/x/mod v0.37.0
