package bench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// RunJetStreamServer runs a nats-server with JetStream file storage until
// SIGTERM or SIGINT: the JetStream side of the benchmark, run as a
// subprocess of the natlog binary ("natlog bench-jetstream-server") so that
// its CPU time and peak memory are measured apart from the load generator.
//
//	--store DIR             JetStream store directory (required)
//	--listen HOST:PORT      client listen address (required)
//	--name NAME             server name (required in a cluster; unique)
//	--cluster-name NAME     cluster name; with --cluster-listen and --routes, a clustered server
//	--cluster-listen H:P    route listen address
//	--routes URL,URL        the other servers' routes (nats://127.0.0.1:PORT)
//	--sync always|default   always: fsync every write before it is acknowledged
//	                        (sync_interval: always); default: nats-server's
//	                        default (an fsync every 2 minutes)
//	--prof-port PORT        serve nats-server's profiling endpoint
//	                        (net/http/pprof) on the --listen host
//
// It prints "ready" on stdout once the server takes connections.
func RunJetStreamServer(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench-jetstream-server", flag.ContinueOnError)
	fs.SetOutput(stderr)
	store := fs.String("store", "", "JetStream store directory")
	listen := fs.String("listen", "", "client listen host:port")
	name := fs.String("name", "", "server name")
	clusterName := fs.String("cluster-name", "", "cluster name")
	clusterListen := fs.String("cluster-listen", "", "route listen host:port")
	routes := fs.String("routes", "", "comma-separated route URLs of the other servers")
	sync := fs.String("sync", "always", "always or default")
	profPort := fs.Int("prof-port", 0, "port of nats-server's profiling endpoint (0: none)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *store == "" || *listen == "" {
		return errors.New("bench-jetstream-server: --store and --listen are required")
	}
	opts, err := jetStreamOptions(*store, *listen, *name, *clusterName, *clusterListen, *routes, *sync)
	if err != nil {
		return fmt.Errorf("bench-jetstream-server: %w", err)
	}
	opts.ProfPort = *profPort

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	s, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("bench-jetstream-server: %w", err)
	}
	s.ConfigureLogger()
	s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return errors.New("bench-jetstream-server: not ready for connections after 30s")
	}
	fmt.Fprintln(stdout, "ready")
	<-sigs
	s.Shutdown()
	s.WaitForShutdown()
	return nil
}

// jetStreamOptions are the nats-server options of one benchmark server.
func jetStreamOptions(store, listen, name, clusterName, clusterListen, routes, sync string) (*server.Options, error) {
	host, port, err := splitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("--listen: %w", err)
	}
	opts := &server.Options{
		ServerName: name,
		Host:       host,
		Port:       port,
		JetStream:  true,
		StoreDir:   store,
		NoSigs:     true,
		NoLog:      true,
		// Generous limits: the load generator must not be the one to stall.
		MaxPayload: 1 << 20,
	}
	switch sync {
	case "always":
		// What "sync_interval: always" in a configuration file sets.
		opts.SyncAlways = true
		opts.SyncInterval = 2 * time.Minute
	case "default":
	default:
		return nil, fmt.Errorf("--sync %q: want always or default", sync)
	}
	if clusterName != "" {
		if clusterListen == "" || name == "" {
			return nil, errors.New("--cluster-name needs --cluster-listen and --name")
		}
		ch, cp, err := splitHostPort(clusterListen)
		if err != nil {
			return nil, fmt.Errorf("--cluster-listen: %w", err)
		}
		opts.Cluster = server.ClusterOpts{Name: clusterName, Host: ch, Port: cp}
		opts.Routes = server.RoutesFromStr(routes)
	}
	return opts, nil
}

func splitHostPort(hp string) (string, int, error) {
	h, p, err := net.SplitHostPort(hp)
	if err != nil {
		return "", 0, err
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		return "", 0, fmt.Errorf("port %q: %w", p, err)
	}
	return h, port, nil
}
