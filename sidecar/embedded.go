package sidecar

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// natsStartTimeout bounds how long the embedded server may take to listen.
const natsStartTimeout = 10 * time.Second

// startEmbedded starts the embedded nats-server as cfg says: from
// cfg.NATSConfigFile if set, listening on cfg.NATSListen unless the file
// sets a port.
func startEmbedded(cfg Config, nodeID string, logger *slog.Logger) (*server.Server, error) {
	opts := &server.Options{}
	if cfg.NATSConfigFile != "" {
		var err error
		if opts, err = server.ProcessConfigFile(cfg.NATSConfigFile); err != nil {
			return nil, fmt.Errorf("nats config %s: %w", cfg.NATSConfigFile, err)
		}
	}
	if opts.Port == 0 {
		host, port, err := splitHostPort(cfg.NATSListen)
		if err != nil {
			return nil, fmt.Errorf("--nats-listen %q: %w", cfg.NATSListen, err)
		}
		opts.Host, opts.Port = host, port
		if port == 0 {
			opts.Port = server.RANDOM_PORT
		}
	}
	if opts.ServerName == "" {
		opts.ServerName = "natlog-" + nodeID
	}
	if len(cfg.NATSLeafRemotes) > 0 {
		if len(opts.LeafNode.Remotes) > 0 {
			return nil, fmt.Errorf("--leaf-remote and the leafnodes remotes of %s: give the leaf remote in one place (the config file's, for credentials or TLS)", cfg.NATSConfigFile)
		}
		var urls []*url.URL
		for _, u := range cfg.NATSLeafRemotes {
			pu, err := url.Parse(u)
			if err != nil {
				return nil, fmt.Errorf("leaf remote %q: %w", u, err)
			}
			urls = append(urls, pu)
		}
		opts.LeafNode.Remotes = append(opts.LeafNode.Remotes, &server.RemoteLeafOpts{URLs: urls})
	}
	opts.NoSigs = true // the natlog process handles signals
	ns, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	nl := &natsLogger{logger: logger.With("component", "nats-server"), verbose: cfg.NATSLog, fatal: make(chan string, 1)}
	ns.SetLoggerV2(nl, false, false, false)
	ns.Start()
	deadline := time.Now().Add(natsStartTimeout)
	for !ns.ReadyForConnections(50 * time.Millisecond) {
		select {
		case msg := <-nl.fatal:
			ns.Shutdown()
			return nil, fmt.Errorf("embedded nats-server: %s", msg)
		default:
		}
		if time.Now().After(deadline) {
			ns.Shutdown()
			return nil, fmt.Errorf("embedded nats-server not ready after %s", natsStartTimeout)
		}
	}
	return ns, nil
}

func splitHostPort(hp string) (string, int, error) {
	host, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", p)
	}
	return host, port, nil
}

// connect opens the node's own NATS connection: in-process to the embedded
// server ns if there is one, else to cfg.NATSURL. It reconnects forever.
func connect(cfg Config, ns *server.Server, nodeID string, logger *slog.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("natlog " + nodeID),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.PingInterval(20 * time.Second),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("natlog: NATS disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			logger.Info("natlog: NATS reconnected", "url", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			logger.Warn("natlog: NATS async error", "subject", subj, "err", err)
		}),
	}
	if cfg.NATSCredsFile != "" {
		opts = append(opts, nats.UserCredentials(cfg.NATSCredsFile))
	}
	if cfg.NATSUser != "" {
		opts = append(opts, nats.UserInfo(cfg.NATSUser, cfg.NATSPassword))
	}
	if cfg.NATSToken != "" {
		opts = append(opts, nats.Token(cfg.NATSToken))
	}
	url := cfg.NATSURL
	if ns != nil {
		opts = append(opts, nats.InProcessServer(ns))
		url = ns.ClientURL()
	} else {
		opts = append(opts, nats.RetryOnFailedConnect(false))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", url, err)
	}
	if !nc.HeadersSupported() {
		nc.Close()
		return nil, errors.New("the NATS server does not support headers (natlog needs nats-server 2.2 or later)")
	}
	return nc, nil
}

// natsLogger adapts nats-server's logging to slog. Notices, debug and trace
// are dropped unless verbose; a fatal error is also sent on fatal (the
// embedded server cannot listen, for example) instead of exiting.
type natsLogger struct {
	logger  *slog.Logger
	verbose bool
	once    sync.Once
	fatal   chan string
}

func (l *natsLogger) Noticef(format string, v ...any) {
	if l.verbose {
		l.logger.Info(fmt.Sprintf(format, v...))
	}
}
func (l *natsLogger) Warnf(format string, v ...any)  { l.logger.Warn(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Errorf(format string, v ...any) { l.logger.Error(fmt.Sprintf(format, v...)) }
func (l *natsLogger) Debugf(format string, v ...any) {}
func (l *natsLogger) Tracef(format string, v ...any) {}
func (l *natsLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	l.logger.Error(msg)
	l.once.Do(func() { l.fatal <- msg })
}
