// Command natlog is a durable commit log served over NATS.
//
//	natlog serve                 run a node (embedded nats-server, HTTP, logs in ./natlog-data)
//	natlog append LOG VALUE...   append records (or one per line from stdin)
//	natlog read LOG OFFSET       read records
//	natlog tail LOG [-f]         show the newest records, and follow
//	natlog logs | info LOG | status | create LOG | delete LOG
//	natlog bench                 natlog and NATS JetStream side by side
//
// Every flag can also be set from the environment: --data-dir from
// NATLOG_DATA_DIR, and so on (--server also from NATS_URL). Run
// "natlog COMMAND --help" for a command's flags.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/natlog/natlog/bench"
)

// version is the natlog version, reported by "natlog version", in status
// replies and by the NATS micro service (it must be a semantic version).
var version = "0.1.0-dev"

type command struct {
	name    string
	summary string
	run     func(args []string, stdout, stderr io.Writer) error
}

var commands []command

func init() {
	commands = []command{
		{"serve", "run a natlog node", runServe},
		{"append", "append records to a log: natlog append LOG VALUE... (or one record per stdin line)", runAppend},
		{"read", "read records: natlog read LOG OFFSET [--count N]", runRead},
		{"tail", "show the newest records of a log and follow it: natlog tail LOG [-n N] [--from OFFSET] [-f]", runTail},
		{"logs", "list the logs", runLogs},
		{"info", "describe a log: natlog info LOG", runInfo},
		{"status", "show the cluster status", runStatus},
		{"cluster", "administer a cluster: natlog cluster remove NODE; natlog cluster step-down [NODE]; natlog cluster recover (quorum lost)", runCluster},
		{"create", "create a log with its own settings: natlog create LOG [--segment-bytes N] ...", runCreate},
		{"delete", "delete a log and all its records: natlog delete LOG", runDelete},
		{"bench", "measure natlog and NATS JetStream side by side: natlog bench [--quick] [--chart FILE.png]", runBench},
		{"bench-jetstream-server", "", bench.RunJetStreamServer}, // hidden: the JetStream server natlog bench starts
		{"version", "print the version", func([]string, io.Writer, io.Writer) error { fmt.Println("natlog", version); return nil }},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks an error in how natlog was called (exit status 2).
var errUsage = errors.New("usage")

// run runs a command line and returns the exit status.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands {
		if c.name == args[0] {
			err := c.run(args[1:], stdout, stderr)
			switch {
			case err == nil:
				return 0
			case errors.Is(err, flag.ErrHelp):
				return 0
			case errors.Is(err, errUsage):
				fmt.Fprintf(stderr, "natlog %s: %v\n", c.name, err)
				return 2
			}
			fmt.Fprintf(stderr, "natlog: %v\n", err)
			return 1
		}
	}
	fmt.Fprintf(stderr, "natlog: unknown command %q\n\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "natlog %s: a durable commit log served over NATS\n\nUsage: natlog COMMAND [flags] [args]\n\nCommands:\n", version)
	for _, c := range commands {
		if c.summary == "" {
			continue // a hidden command
		}
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.summary)
	}
	fmt.Fprintf(w, "\nRun \"natlog COMMAND --help\" for a command's flags. Every flag can also be set\n"+
		"from the environment as NATLOG_<FLAG> (e.g. NATLOG_DATA_DIR); --server also from NATS_URL.\n")
}

// newFlagSet makes a command's flag set; its usage lists the flags with
// the environment variable of each.
func newFlagSet(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: natlog %s %s\n\nFlags (each also from the environment variable shown):\n", name, synopsis)
		var names []string
		fs.VisitAll(func(f *flag.Flag) { names = append(names, f.Name) })
		sort.Strings(names)
		for _, n := range names {
			f := fs.Lookup(n)
			typ, help := flag.UnquoteUsage(f)
			dash := "--"
			if len(n) == 1 {
				dash = "-"
			}
			fmt.Fprintf(stderr, "  %s%s %s\n", dash, n, typ)
			fmt.Fprintf(stderr, "        %s", strings.ReplaceAll(help, "\n", "\n        "))
			if f.DefValue != "" && f.DefValue != "false" && f.DefValue != "0" {
				fmt.Fprintf(stderr, " (default %q)", f.DefValue)
			}
			fmt.Fprintf(stderr, "\n        env %s\n", envName(n))
		}
	}
	return fs
}

// envName is the environment variable of a flag: NATLOG_ and the flag's
// name in upper case with dashes as underscores.
func envName(flagName string) string {
	return "NATLOG_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags sets the flags from the environment, then from args (which
// win), and returns the positional arguments. Flags may follow positional
// arguments ("natlog read orders 5 --count 10").
func parseFlags(fs *flag.FlagSet, args []string, extraEnv map[string]string) ([]string, error) {
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		name := envName(f.Name)
		v, ok := os.LookupEnv(name)
		if !ok {
			if alt := extraEnv[f.Name]; alt != "" {
				v, ok = os.LookupEnv(alt)
				name = alt
			}
		}
		if ok && envErr == nil {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("%w: %s=%q: %v", errUsage, name, v, err)
			}
		}
	})
	if envErr != nil {
		return nil, envErr
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
