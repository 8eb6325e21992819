module github.com/degenerate/realtime/interop

go 1.26.0

require (
	github.com/coder/websocket v1.8.15
	github.com/degenerate/realtime v0.1.0
	github.com/gorilla/websocket v1.5.3
)

require (
	github.com/golang-jwt/jwt/v5 v5.3.1 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/text v0.43.0 // indirect
)
