package sidecar

import (
	"strconv"
	"time"

	"github.com/hashicorp/raft"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sys/unix"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// op names a kind of request, the "op" label of the request metrics.
type op int

const (
	opAppend op = iota
	opAppendBatch
	opRead
	opReadBatch
	opInfo
	opLogs
	opStatus
	opCreate
	opDelete
	opHTTPAppend
	opHTTPRead
	opRemove
	opStepDown
	numOps
)

var opNames = [numOps]string{
	"append", "append_batch", "read", "read_batch", "info", "logs", "status", "create", "delete",
	"http_append", "http_read", "cluster_remove", "cluster_stepdown",
}

// outcome classifies a request's result, the "outcome" label.
type outcome int

const (
	outcomeOK outcome = iota
	outcomeBadRequest
	outcomeNotFound
	outcomeConflict
	outcomeTooLarge
	outcomeError
	numOutcomes
)

var outcomeNames = [numOutcomes]string{"ok", "bad_request", "not_found", "conflict", "too_large", "error"}

func outcomeOf(e *protocol.Error) outcome {
	if e == nil {
		return outcomeOK
	}
	switch e.Code {
	case 400:
		return outcomeBadRequest
	case 404:
		return outcomeNotFound
	case 409:
		return outcomeConflict
	case 413:
		return outcomeTooLarge
	}
	return outcomeError
}

// metrics are the node's Prometheus metrics, in a registry of their own
// (so that several nodes can live in one process, as in tests).
type metrics struct {
	reg         *prometheus.Registry
	fsync       prometheus.Histogram
	fsyncErrors prometheus.Counter
	// cells caches the labelled series so the request path does no label
	// lookups.
	cells [numOps][numOutcomes]struct {
		count   prometheus.Counter
		latency prometheus.Observer
	}
}

// newMetrics makes the metrics; registerLogs adds the per-log ones once
// the logs are open (their OnSync hook needs the metrics first).
func newMetrics(dataDir string) *metrics {
	m := &metrics{reg: prometheus.NewRegistry()}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "natlog_requests_total",
		Help: "Requests served, by operation and outcome.",
	}, []string{"op", "outcome"})
	latency := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "natlog_request_duration_seconds",
		Help:    "Time from receiving a request to sending its reply, by operation and outcome.",
		Buckets: prometheus.ExponentialBuckets(25e-6, 2, 18), // 25µs .. 3.3s
	}, []string{"op", "outcome"})
	m.fsync = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "natlog_fsync_duration_seconds",
		Help:    "Duration of store fsyncs, all logs.",
		Buckets: prometheus.ExponentialBuckets(25e-6, 2, 16),
	})
	m.fsyncErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "natlog_fsync_errors_total",
		Help: "Failed store fsyncs, all logs. After one, the log refuses appends until the node restarts.",
	})
	m.reg.MustRegister(requests, latency, m.fsync, m.fsyncErrors, diskCollector{dir: dataDir},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for o := range numOps {
		for oc := range numOutcomes {
			m.cells[o][oc].count = requests.WithLabelValues(opNames[o], outcomeNames[oc])
			m.cells[o][oc].latency = latency.WithLabelValues(opNames[o], outcomeNames[oc])
		}
	}
	return m
}

// registerFiles adds the gauges of the logs' open-file budget.
func (m *metrics) registerFiles(b *logcore.FileBudget) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "natlog_open_segments",
			Help: "Segments of the node's logs whose files are open (up to three descriptors each).",
		}, func() float64 { return float64(b.OpenSegments()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "natlog_open_segments_max",
			Help: "The bound on natlog_open_segments (--max-open-files / 3); it is exceeded only while more segments are in use at once.",
		}, func() float64 { return float64(b.Max()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "natlog_segment_closes_total",
			Help: "Segments whose files were closed to keep within the bound (reopened when used again); a fast rise means the bound is too small for the logs in use.",
		}, func() float64 { return float64(b.Evictions()) }),
	)
}

func (m *metrics) registerLogs(logs *manager) {
	m.reg.MustRegister(&logCollector{logs: logs})
}

// observe counts one request.
func (m *metrics) observe(o op, e *protocol.Error, d time.Duration) {
	c := &m.cells[o][outcomeOf(e)]
	c.count.Inc()
	c.latency.Observe(d.Seconds())
}

// onSync is the logs' logcore.Config.OnSync hook.
func (m *metrics) onSync(d time.Duration, err error) {
	m.fsync.Observe(d.Seconds())
	if err != nil {
		m.fsyncErrors.Inc()
	}
}

// logCollector reports each log's extent at scrape time.
type logCollector struct {
	logs *manager
}

var (
	descLogBytes    = prometheus.NewDesc("natlog_log_bytes", "Bytes in the log's store files.", []string{"log"}, nil)
	descLogSegments = prometheus.NewDesc("natlog_log_segments", "Segments in the log.", []string{"log"}, nil)
	descLogRecords  = prometheus.NewDesc("natlog_log_records", "Records kept in the log.", []string{"log"}, nil)
	descLogNext     = prometheus.NewDesc("natlog_log_next_offset", "The offset the log's next record will get.", []string{"log"}, nil)
	descLogLowest   = prometheus.NewDesc("natlog_log_lowest_offset", "The log's oldest kept offset.", []string{"log"}, nil)
	descLogs        = prometheus.NewDesc("natlog_logs", "Logs on this node.", nil, nil)
	descLogNoSpace  = prometheus.NewDesc("natlog_log_no_space_total",
		"Appends refused because the disk had no room for them (nothing of them was written), since the log was opened.", []string{"log"}, nil)
	descDiskFree = prometheus.NewDesc("natlog_data_dir_free_bytes", "Bytes free for natlog on the data directory's file system.", nil, nil)
	descDiskSize = prometheus.NewDesc("natlog_data_dir_size_bytes", "Size of the data directory's file system.", nil, nil)
)

// diskCollector reports the data directory's file system at scrape time:
// a full disk refuses appends (natlog_log_no_space_total), so watch it.
type diskCollector struct{ dir string }

func (c diskCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDiskFree
	ch <- descDiskSize
}

func (c diskCollector) Collect(ch chan<- prometheus.Metric) {
	var st unix.Statfs_t
	if err := unix.Statfs(c.dir, &st); err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(descDiskFree, prometheus.GaugeValue, float64(st.Bavail)*float64(st.Bsize))
	ch <- prometheus.MustNewConstMetric(descDiskSize, prometheus.GaugeValue, float64(st.Blocks)*float64(st.Bsize))
}

func (c *logCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLogBytes, descLogSegments, descLogRecords, descLogNext, descLogLowest, descLogs, descLogNoSpace} {
		ch <- d
	}
}

func (c *logCollector) Collect(ch chan<- prometheus.Metric) {
	logs := c.logs.list()
	ch <- prometheus.MustNewConstMetric(descLogs, prometheus.GaugeValue, float64(len(logs)))
	for _, e := range logs {
		in, err := e.log.Info()
		if err != nil {
			continue // closed by a delete or shutdown since list
		}
		ch <- prometheus.MustNewConstMetric(descLogBytes, prometheus.GaugeValue, float64(in.Bytes), e.name)
		ch <- prometheus.MustNewConstMetric(descLogSegments, prometheus.GaugeValue, float64(in.Segments), e.name)
		ch <- prometheus.MustNewConstMetric(descLogRecords, prometheus.GaugeValue, float64(in.Records), e.name)
		ch <- prometheus.MustNewConstMetric(descLogNext, prometheus.GaugeValue, float64(in.NextOffset), e.name)
		ch <- prometheus.MustNewConstMetric(descLogLowest, prometheus.GaugeValue, float64(in.LowestOffset), e.name)
		ch <- prometheus.MustNewConstMetric(descLogNoSpace, prometheus.CounterValue, float64(e.log.Stats().ReserveFailures), e.name)
	}
}

// clusterMetrics are the Raft figures of a cluster node: its entries'
// apply latency and size, its leadership changes, and (clusterCollector)
// its Raft state, indexes, members and the replicated logs.
type clusterMetrics struct {
	apply      prometheus.Histogram
	entryOps   prometheus.Histogram
	leadership prometheus.Counter
}

func (m *metrics) registerCluster(n *clusterNode) *clusterMetrics {
	cm := &clusterMetrics{
		apply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "natlog_raft_apply_duration_seconds",
			Help:    "Time from handing an entry to Raft until it is committed and applied on the leader.",
			Buckets: prometheus.ExponentialBuckets(100e-6, 2, 16), // 100µs .. 3.3s
		}),
		entryOps: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "natlog_raft_entry_requests",
			Help:    "Client requests carried by one Raft entry (the leader batches those that arrive while entries are in flight).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 12), // 1 .. 2048
		}),
		leadership: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "natlog_raft_leadership_changes_total",
			Help: "Times this node became or stopped being the leader.",
		}),
	}
	m.reg.MustRegister(cm.apply, cm.entryOps, cm.leadership, &clusterCollector{n: n})
	return cm
}

// clusterCollector reports a cluster node's Raft state and its replicated
// logs at scrape time.
type clusterCollector struct {
	n *clusterNode
}

var (
	descRaftState       = prometheus.NewDesc("natlog_raft_state", "1 for the node's current Raft state.", []string{"state"}, nil)
	descRaftTerm        = prometheus.NewDesc("natlog_raft_term", "The node's current Raft term.", nil, nil)
	descRaftCommit      = prometheus.NewDesc("natlog_raft_commit_index", "The highest Raft index the node knows to be committed.", nil, nil)
	descRaftApplied     = prometheus.NewDesc("natlog_raft_applied_index", "The highest Raft index handed to the FSM (raft's AppliedIndex).", nil, nil)
	descRaftFSMApplied  = prometheus.NewDesc("natlog_raft_fsm_applied_index", "The Raft index of the last command the FSM applied (or of the snapshot it started from).", nil, nil)
	descRaftLastIndex   = prometheus.NewDesc("natlog_raft_last_log_index", "The last index in the node's Raft log.", nil, nil)
	descRaftLastContact = prometheus.NewDesc("natlog_raft_last_contact_seconds", "Seconds since this follower last heard from the leader (absent on the leader and before the first contact).", nil, nil)
	descRaftMembers     = prometheus.NewDesc("natlog_raft_members", "Members of the Raft configuration, by role.", []string{"role"}, nil)
)

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRaftState, descRaftTerm, descRaftCommit, descRaftApplied, descRaftFSMApplied,
		descRaftLastIndex, descRaftLastContact, descRaftMembers,
		descLogBytes, descLogSegments, descLogRecords, descLogNext, descLogLowest, descLogs, descLogNoSpace} {
		ch <- d
	}
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	n := c.n
	if n.raft == nil {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	state := n.raft.State()
	for _, s := range []raft.RaftState{raft.Follower, raft.Candidate, raft.Leader, raft.Shutdown} {
		v := 0.0
		if s == state {
			v = 1
		}
		gauge(descRaftState, v, stateName(s))
	}
	st := n.raft.Stats()
	u := func(k string) float64 { v, _ := strconv.ParseUint(st[k], 10, 64); return float64(v) }
	gauge(descRaftTerm, u("term"))
	gauge(descRaftCommit, u("commit_index"))
	gauge(descRaftApplied, float64(n.raft.AppliedIndex()))
	gauge(descRaftFSMApplied, float64(n.fsm.AppliedIndex()))
	gauge(descRaftLastIndex, float64(n.raft.LastIndex()))
	if t := n.raft.LastContact(); state != raft.Leader && !t.IsZero() {
		gauge(descRaftLastContact, time.Since(t).Seconds())
	}
	if f := n.raft.GetConfiguration(); f.Error() == nil {
		voters, nonvoters := 0, 0
		for _, srv := range f.Configuration().Servers {
			if srv.Suffrage == raft.Voter {
				voters++
			} else {
				nonvoters++
			}
		}
		gauge(descRaftMembers, float64(voters), "voter")
		gauge(descRaftMembers, float64(nonvoters), "nonvoter")
	}
	names := n.fsm.Logs()
	gauge(descLogs, float64(len(names)))
	for _, name := range names {
		l := n.fsm.Log(name)
		if l == nil {
			continue
		}
		in, err := l.Info()
		if err != nil {
			continue // deleted or closed since Logs
		}
		gauge(descLogBytes, float64(in.Bytes), name)
		gauge(descLogSegments, float64(in.Segments), name)
		gauge(descLogRecords, float64(in.Records), name)
		gauge(descLogNext, float64(in.NextOffset), name)
		gauge(descLogLowest, float64(in.LowestOffset), name)
		ch <- prometheus.MustNewConstMetric(descLogNoSpace, prometheus.CounterValue, float64(l.Stats().ReserveFailures), name)
	}
}
