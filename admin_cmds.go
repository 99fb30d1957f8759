package main

import (
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/natlog/natlog/sidecar"
	"github.com/natlog/natlog/sidecar/protocol"
)

// The commands that describe and manage logs: logs, info, status, create,
// delete, cluster remove.

func runLogs(args []string, stdout, stderr io.Writer) error {
	var c cliConn
	fs := newFlagSet("logs", "", stderr)
	c.register(fs)
	if _, err := c.parse(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	if err := c.connect(c.subjects.Logs()); err != nil {
		return err
	}
	defer c.close()
	ctx, cancel := c.context()
	defer cancel()
	logs, err := c.cl.Logs(ctx)
	if err != nil {
		return c.explain(err)
	}
	rep := protocol.LogsReply{Logs: logs}
	if c.json {
		return printJSON(stdout, rep)
	}
	if len(rep.Logs) == 0 {
		fmt.Fprintln(stdout, "no logs (an append creates one: natlog append LOG VALUE)")
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LOG\tRECORDS\tFIRST\tLAST\tSEGMENTS\tSIZE\tSYNC")
	for _, l := range rep.Logs {
		if l.Error != "" {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\tOUT OF SERVICE: %s\n", l.Log, l.Error)
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\t%d\t%s\t%s\n", l.Log, l.Records, l.FirstOffset, lastOffset(l), l.Segments, humanBytes(l.Bytes), l.Sync)
	}
	return tw.Flush()
}

// printJSON prints v as the node's JSON reply would read.
func printJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func lastOffset(l protocol.LogInfo) string {
	if l.LastOffset == nil {
		return "-"
	}
	return fmt.Sprint(*l.LastOffset)
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func bound(n int64, human func(int64) string) string {
	if n == 0 {
		return "none"
	}
	return human(n)
}

func printInfo(w io.Writer, l protocol.LogInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 1, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s:\t%s\n", k, v) }
	row("log", l.Log)
	row("records", fmt.Sprint(l.Records))
	row("first offset", fmt.Sprint(l.FirstOffset))
	row("last offset", lastOffset(l))
	row("next offset", fmt.Sprint(l.NextOffset))
	row("segments", fmt.Sprint(l.Segments))
	row("size", humanBytes(l.Bytes))
	row("sync", l.Sync)
	row("segment size", humanBytes(l.MaxSegmentBytes))
	row("retention bytes", bound(l.RetentionBytes, humanBytes))
	row("retention age", bound(l.RetentionAgeMs, func(ms int64) string { return (time.Duration(ms) * time.Millisecond).String() }))
	row("retention segments", bound(int64(l.RetentionSegments), func(n int64) string { return fmt.Sprint(n) }))
	if l.Created != 0 {
		row("created", time.Unix(0, l.Created).UTC().Format(time.RFC3339))
	} else {
		row("created", "unknown")
	}
	tw.Flush()
}

func runInfo(args []string, stdout, stderr io.Writer) error {
	var c cliConn
	fs := newFlagSet("info", "LOG", stderr)
	c.register(fs)
	pos, err := c.parse(fs, args, 1, "LOG")
	if err != nil {
		return err
	}
	if err := c.connect(c.subjects.Info(pos[0])); err != nil {
		return err
	}
	defer c.close()
	ctx, cancel := c.context()
	defer cancel()
	l, err := c.cl.Info(ctx, pos[0])
	if err != nil {
		return c.explain(err)
	}
	if c.json {
		return printJSON(stdout, l)
	}
	printInfo(stdout, l)
	return nil
}

func runStatus(args []string, stdout, stderr io.Writer) error {
	var c cliConn
	fs := newFlagSet("status", "", stderr)
	c.register(fs)
	if _, err := c.parse(fs, args, 0, "no arguments"); err != nil {
		return err
	}
	if err := c.connect(c.subjects.Status()); err != nil {
		return err
	}
	defer c.close()
	ctx, cancel := c.context()
	defer cancel()
	st, err := c.cl.Status(ctx)
	if err != nil {
		return c.explain(err)
	}
	if c.json {
		return printJSON(stdout, st)
	}
	mode := st.Mode + " mode"
	if st.Cluster != "" {
		mode += " " + st.Cluster
	}
	fmt.Fprintf(stdout, "node %s (%s, %s), natlog %s, up since %s\n", st.NodeID, st.State, mode, st.Version,
		time.Unix(0, st.StartedAt).UTC().Format(time.RFC3339))
	fmt.Fprintf(stdout, "leader: %s  term: %d  commit index: %d  applied index: %d\n", st.Leader, st.Term, st.CommitIndex, st.AppliedIndex)
	fmt.Fprintf(stdout, "logs: %d  subjects: %s.>  max record: %s\n", st.Logs, st.Prefix, humanBytes(st.MaxRecordBytes))
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tSTATE\tROLE\tLAG\tREADS\tHOST\tADDRESS")
	for _, p := range st.Peers {
		role := p.Role
		if role == "" {
			role = "voter"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\t%s\n", p.ID, p.State, role, p.LagIndex, p.Reads, p.Host, p.Address)
	}
	return tw.Flush()
}

func runCreate(args []string, stdout, stderr io.Writer) error {
	var c cliConn
	fs := newFlagSet("create", "LOG [settings]   (unset settings follow the node's defaults)", stderr)
	c.register(fs)
	segment := fs.String("segment-bytes", "", "size at which the log starts a new segment, e.g. 16MiB")
	fsync := fs.String("fsync", "", "always, interval or never")
	retBytes := fs.String("retention-bytes", "", "bound on the log's total size (0: none)")
	retAge := fs.Duration("retention-age", -1, "age after which segments are removed (0: none)")
	retSegs := fs.Int("retention-segments", -1, "bound on the number of segments (0: none)")
	pos, err := c.parse(fs, args, 1, "LOG")
	if err != nil {
		return err
	}
	var s protocol.LogSettings
	if *segment != "" {
		n, err := parseSize(*segment)
		if err != nil {
			return fmt.Errorf("%w: --segment-bytes: %v", errUsage, err)
		}
		s.MaxSegmentBytes = &n
	}
	if *fsync != "" {
		s.Sync = fsync
	}
	if *retBytes != "" {
		n, err := parseSize(*retBytes)
		if err != nil {
			return fmt.Errorf("%w: --retention-bytes: %v", errUsage, err)
		}
		s.RetentionBytes = &n
	}
	if *retAge >= 0 {
		ms := retAge.Milliseconds()
		s.RetentionAgeMs = &ms
	}
	if *retSegs >= 0 {
		s.RetentionSegments = retSegs
	}
	if err := c.connect(c.subjects.Create(pos[0])); err != nil {
		return err
	}
	defer c.close()
	ctx, cancel := c.context()
	defer cancel()
	l, err := c.cl.Create(ctx, pos[0], s)
	if err != nil {
		return c.explain(err)
	}
	if c.json {
		return printJSON(stdout, l)
	}
	printInfo(stdout, l)
	return nil
}

func runDelete(args []string, stdout, stderr io.Writer) error {
	var c cliConn
	fs := newFlagSet("delete", "LOG", stderr)
	c.register(fs)
	pos, err := c.parse(fs, args, 1, "LOG")
	if err != nil {
		return err
	}
	if err := c.connect(c.subjects.Delete(pos[0])); err != nil {
		return err
	}
	defer c.close()
	ctx, cancel := c.context()
	defer cancel()
	if err := c.cl.Delete(ctx, pos[0]); err != nil {
		return c.explain(err)
	}
	if c.json {
		return printJSON(stdout, protocol.DeleteReply{Log: pos[0], Deleted: true})
	}
	fmt.Fprintf(stdout, "%s: deleted\n", strings.TrimSpace(pos[0]))
	return nil
}

// runCluster runs the cluster administration subcommands.
func runCluster(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "recover" {
		return runClusterRecover(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "step-down" {
		return runClusterStepDown(args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "remove" {
		return fmt.Errorf("%w: want natlog cluster remove NODE, natlog cluster step-down [NODE], or natlog cluster recover --data-dir DIR", errUsage)
	}
	var c cliConn
	fs := newFlagSet("cluster remove", "NODE   (remove a member that will not come back; a running node rejoins: stop it first)", stderr)
	c.register(fs)
	pos, err := c.parse(fs, args[1:], 1, "NODE")
	if err != nil {
		return err
	}
	if err := c.connect(c.subjects.Prefix() + ".cluster.remove"); err != nil {
		return err
	}
	defer c.close()
	ctx, cancel := c.context()
	defer cancel()
	if err := c.cl.RemoveNode(ctx, pos[0]); err != nil {
		return c.explain(err)
	}
	if c.json {
		return printJSON(stdout, map[string]string{"removed": pos[0]})
	}
	fmt.Fprintf(stdout, "removed %s from the cluster\n", pos[0])
	return nil
}

// runClusterStepDown is "natlog cluster step-down [NODE]".
func runClusterStepDown(args []string, stdout, stderr io.Writer) error {
	var c cliConn
	fs := newFlagSet("cluster step-down", "[NODE]   (the leader hands leadership to NODE, or to any other voter)", stderr)
	c.register(fs)
	pos, err := c.parse(fs, args, -1, "[NODE]")
	if err != nil {
		return err
	}
	if len(pos) > 1 {
		return fmt.Errorf("%w: want at most one NODE, got %q", errUsage, pos)
	}
	to := ""
	if len(pos) == 1 {
		to = pos[0]
	}
	if err := c.connect(c.subjects.Prefix() + ".cluster.stepdown"); err != nil {
		return err
	}
	defer c.close()
	ctx, cancel := c.context()
	defer cancel()
	leader, err := c.cl.StepDown(ctx, to)
	if err != nil {
		return c.explain(err)
	}
	if c.json {
		return printJSON(stdout, map[string]string{"leader": leader})
	}
	fmt.Fprintf(stdout, "%s leads the cluster\n", leader)
	return nil
}

// runClusterRecover is "natlog cluster recover": the offline last resort
// after the loss of a majority of the voters (sidecar.RecoverCluster).
func runClusterRecover(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cluster recover", "--data-dir DIR [--voters ID,...] --yes   (offline: the node must be stopped)", stderr)
	cfg := sidecar.DefaultConfig()
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "data dir of the stopped node to recover")
	fs.StringVar(&cfg.NodeID, "node-id", "", "the node's id (default: the one kept in the data dir)")
	voters := fs.String("voters", "", "node ids of the new cluster's voters, comma-separated, this node among them (default: this node alone)")
	yes := fs.Bool("yes", false, "do it: without it, only say what would be done")
	jsonOut := fs.Bool("json", false, "print the result as JSON")
	pos, err := parseFlags(fs, args, nil)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, pos)
	}
	var ids []string
	for _, id := range strings.Split(*voters, ",") {
		if id = strings.TrimSpace(id); id != "" {
			ids = append(ids, id)
		}
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if !*yes {
		who := "this node alone"
		if len(ids) > 0 {
			who = strings.Join(ids, ", ")
		}
		fmt.Fprintf(stdout, "natlog cluster recover would make the node in %s a cluster of %s.\n"+
			"Use it only when a majority of the voters is lost for good. The node's state becomes the truth:\n"+
			"appends the old cluster never acknowledged but this node holds may appear, and what the lost voters\n"+
			"had that this node never received is gone; recover the member with the highest applied index.\n"+
			"Do not restart the lost voters with their old data: wipe them and let them join.\n"+
			"Run again with --yes to do it.\n", cfg.DataDir, who)
		return nil
	}
	res, err := sidecar.RecoverCluster(cfg, ids)
	if err != nil {
		return err
	}
	if *jsonOut {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "recovered node %s: voters %s, state up to Raft index %d, logs %s\n"+
		"start it as before (natlog serve --cluster ... --data-dir %s); it will lead once the voters named are up\n",
		res.NodeID, strings.Join(res.Voters, ","), res.LastIndex, strings.Join(res.Logs, " "), cfg.DataDir)
	return nil
}
