// Command realtime-demo serves the realtime demo: a web page at / and the
// realtime endpoint at /realtime, over a manager holding the share data
// "demo" and "board", with a readiness probe at /ready and Prometheus
// metrics at /metrics.
//
//	go run ./cmd/realtime-demo            # serve on 127.0.0.1:8080
//	go run ./cmd/realtime-demo -loopback  # walk a Go client through the protocol and exit
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/degenerate/realtime"
	"github.com/degenerate/realtime/internal/demo"
	"github.com/degenerate/realtime/promrt"
	"github.com/degenerate/realtime/redisrt"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:8080", "address to serve on")
	loopback := flag.Bool("loopback", false, "run a server and a Go client through the whole protocol, print what happens and exit (0 when every step behaved)")
	heartbeat := flag.Duration("heartbeat", 0, "heartbeat interval; 0 means the server's default (30s), negative turns the heartbeat off")
	replayWindow := flag.Int("replay-window", 0, "transactions retained per share data for replay; 0 means the default (100), negative keeps none")
	sendBuffer := flag.Int("send-buffer", 0, "send-buffer cap per connection, in bytes, past which the connection is closed with 4001; 0 means the default (1 MiB)")
	compress := flag.Bool("compress", true, "negotiate permessage-deflate with clients that offer it (every browser does); the package's default is off")
	readLimit := flag.Int64("read-limit", 0, "largest client message, in bytes, past which the connection is closed with 1009; 0 means the default (64 KiB)")
	jwtSecret := flag.String("jwt-secret", "", "turn on the JWT bridge with this HMAC (HS256) secret; clients need a token with aud SHAREDATA")
	jwtIssuer := flag.String("jwt-issuer", "realtime-demo", "the issuer (iss) trusted with -jwt-secret")
	dataDir := flag.String("data", "realtime-data", "directory that keeps the share data, so they survive a restart or a crash")
	inMemory := flag.Bool("memory", false, "keep the share data in memory only (lost when the demo stops), instead of in -data")
	metricsAddr := flag.String("metrics-addr", "", "serve Prometheus metrics at /metrics on this address (such as 127.0.0.1:9464), never on -addr: a scrape costs the server CPU, so keep it off the public listener; empty means no metrics")
	maxConns := flag.Int("max-connections", 1000, "most realtime connections at once, past which upgrades get 503; keep it under the process's file-descriptor limit (ulimit -n); negative means no limit")
	proposalRate := flag.Int("proposals-per-second", 0, "proposals one connection may make per second; 0 means the default (100), negative means no limit")
	redisAddr := flag.String("redis", "", "keep the share data in this Redis (host:port) instead, so several demo processes serve the same counter and board")
	flag.Parse()

	if *loopback {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := demo.Loopback(ctx, os.Stdout); err != nil {
			fmt.Fprintln(os.Stdout, "FAIL  "+err.Error())
			os.Exit(1)
		}
		fmt.Println("PASS  every step behaved as the protocol says")
		return
	}

	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	var mgr demo.Store
	var replayStore realtime.ReplayStore // nil: the server's in-memory window
	switch {
	case *redisAddr != "":
		rdb := redis.NewClient(&redis.Options{Addr: *redisAddr})
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		rm, err := redisrt.NewManager(ctx, rdb, redisrt.Options{Prefix: "realtime-demo", Logger: logger})
		cancel()
		if err != nil {
			logger.Error("connecting to Redis", "addr", *redisAddr, "err", err)
			os.Exit(1)
		}
		defer rm.Close()
		mgr, replayStore = rm, rm
		fmt.Printf("share data kept in Redis at %s: every demo started with -redis %s serves the same ones\n", *redisAddr, *redisAddr)
	case *inMemory:
		mgr = realtime.NewMemoryManager()
	default:
		dm, err := realtime.OpenDiskManager(*dataDir, &realtime.DiskManagerOptions{ReplayWindow: *replayWindow, Logger: logger})
		if err != nil {
			logger.Error("opening the data directory", "dir", *dataDir, "err", err)
			os.Exit(1)
		}
		defer dm.Close()
		mgr, replayStore = dm, dm // the window is on disk too, so a restart replays what pages missed
		fmt.Printf("share data kept in %s (-memory to keep them in memory only)\n", *dataDir)
	}
	if err := demo.Populate(context.Background(), mgr); err != nil {
		logger.Error("creating the demo's share data", "err", err)
		os.Exit(1)
	}
	// The demo's function ids are few and fixed, so each gets its own
	// label value; anything else a client sends counts as "other".
	metrics := promrt.New(&promrt.Options{FunctionIDs: []string{demo.Set.ID, demo.Increment.ID, demo.Add.ID, demo.Clear.ID}})
	reg := prometheus.NewRegistry()
	reg.MustRegister(metrics, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	opts := &realtime.ServerOptions{
		Observer:           metrics.Observer(),
		ReplayStore:        replayStore,
		ResolveFunction:    realtime.IDFunctionResolver(mgr),
		HeartbeatInterval:  *heartbeat,
		ReplayBufferSize:   *replayWindow,
		MaxBufferedBytes:   *sendBuffer,
		ProposalsPerSecond: *proposalRate,
		MaxConnections:     *maxConns,
		Accept:             realtime.AcceptOptions{EnableCompression: *compress, ConnOptions: realtime.ConnOptions{ReadLimit: *readLimit}},
		Logger:             logger,
	}
	if *jwtSecret != "" {
		if err := demo.UseJWT(opts, []byte(*jwtSecret), *jwtIssuer); err != nil {
			logger.Error("JWT bridge", "err", err)
			os.Exit(2)
		}
	}
	srv := realtime.NewServer(mgr, opts)
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		logger.Error("listen", "err", err)
		os.Exit(1)
	}
	// Metrics have a listener of their own, for the monitoring network
	// alone: on the public one, anyone could make the server work for
	// each scrape.
	var ms *http.Server
	if *metricsAddr != "" {
		mln, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			logger.Error("listen for metrics", "err", err)
			os.Exit(1)
		}
		mmux := http.NewServeMux()
		mmux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelError),
			MaxRequestsInFlight: 2}))
		ms = demo.NewHTTPServer(mmux)
		fmt.Printf("metrics on http://%s/metrics\n", mln.Addr())
		go ms.Serve(mln)
	}
	mux := http.NewServeMux()
	mux.Handle("/", demo.Handler(srv))
	hs := demo.NewHTTPServer(mux) // with ReadHeaderTimeout, IdleTimeout, MaxHeaderBytes
	fmt.Printf("realtime demo: open http://%s/ (realtime endpoint ws://%s/realtime)\n", ln.Addr(), ln.Addr())
	if *jwtSecret != "" {
		tok := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{
			"iss": *jwtIssuer, "sub": "demo-user", "aud": realtime.AudienceShareData, "exp": time.Now().Add(time.Hour).Unix(),
		})
		signed, _ := tok.SignedString([]byte(*jwtSecret))
		fmt.Printf("JWT bridge on: a token valid for an hour: http://%s/?token=%s\n", ln.Addr(), signed)
	} else {
		fmt.Println("no authentication: anyone who can reach this address can connect")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	shutdownDone := make(chan struct{})
	go func() {
		defer close(shutdownDone)
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
		hs.Shutdown(sctx)
		if ms != nil {
			ms.Shutdown(sctx)
		}
	}()
	if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Error("serve", "err", err)
		os.Exit(1)
	}
	<-shutdownDone
}
