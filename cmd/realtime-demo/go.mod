module github.com/degenerate/realtime/cmd/realtime-demo

go 1.26.0

require (
	github.com/degenerate/realtime v0.1.0
	github.com/degenerate/realtime/redisrt v0.1.0
	github.com/golang-jwt/jwt/v5 v5.3.1
	github.com/redis/go-redis/v9 v9.23.0
)
