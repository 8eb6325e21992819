module github.com/degenerate/realtime/browsertest

go 1.26.0

require (
	github.com/chromedp/chromedp v0.23.0
	github.com/degenerate/realtime v0.1.0
	github.com/golang-jwt/jwt/v5 v5.3.1
)

require (
	github.com/chromedp/cdproto v0.159.0 // indirect
	github.com/go-json-experiment/json v0.0.0-20260213210345-44df1a37e875 // indirect
	golang.org/x/net v0.62.0 // indirect
	golang.org/x/text v0.43.0 // indirect
)
