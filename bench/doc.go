// Package bench measures natlog and NATS JetStream side by side: the same
// machine, the same run, the same payloads, windows and durability, the
// two systems alternately, several rounds. It is "natlog bench".
//
// # What runs
//
// The servers are subprocesses of the natlog binary, so that their CPU time
// and memory are measured apart from the load generator (this process):
//
//   - natlog R1: one "natlog serve" with an embedded NATS server.
//     natlog R3: three nodes ("--cluster bench --bootstrap-expect 3"); n1
//     embeds NATS and n2, n3 connect to it. Ready when the cluster status
//     names a leader and every member, leadership has been moved to n1
//     (natlog cluster step-down n1), and the leader takes a create.
//   - JetStream R1: one "natlog bench-jetstream-server" (nats-server,
//     embedded, JetStream file storage). JetStream R3: three of them routed
//     on loopback, and a stream with Replicas: 3 whose replicas are current
//     and whose subject takes publishes. The load generator then connects
//     to the stream leader's server, as it connects to the one NATS server
//     that natlog's three nodes share and whose process holds natlog's
//     leader: no route hop to the leader for either system.
//
// Every measurement (one scenario, one system, one round) gets fresh
// servers in a fresh directory, a fixed log or stream name, a short warm-up
// and then Config.Duration of load. The servers are then stopped (natlog
// with SIGINT, which in cluster mode stops a node without leaving the
// cluster; nats-server with SIGTERM) and their CPU seconds (user + system)
// and peak RSS are read from the processes' rusage: figures for the
// servers' whole lives, summed over the replicas' processes.
//
// # Durability
//
// "matched": natlog --fsync always and JetStream sync_interval: always,
// both fsync before they acknowledge. "default": each system as it ships.
// natlog's default is --fsync always, so its default figures are its
// matched ones (not measured twice); JetStream's default acknowledges
// before an fsync (every 2 minutes). Reads fsync nothing and are measured
// under matched durability only.
//
// # Modes (the load generator)
//
//   - one: append one record, wait for its acknowledgement, repeat.
//     natlog: client.Append; JetStream: js.Publish.
//   - window: Config.Window (256) appends pending. natlog: AppendAsync
//     with WithMaxPending(256), which sends the records queued for a log
//     as batches with one request in flight, latency from the AppendAsync
//     call to the future's completion; JetStream:
//     PublishMsgAsync with WithPublishAsyncMaxPending(256), latency from
//     the publish to its ack handler.
//   - batch: Config.BatchSize (100) records per request, one request at a
//     time. natlog: client.AppendBatch; JetStream: an atomic
//     batch publish (nats-server 2.12+, AllowAtomicPublish). nats.go v1.55
//     has no call for it, so the headers Nats-Batch-Id,
//     Nats-Batch-Sequence and Nats-Batch-Commit are set by hand; only the
//     commit is a request, and its ack covers the batch.
//   - read: one record at a random offset of a log pre-filled with
//     Config.Prefill records. natlog: client.Read (to a follower in a
//     cluster, the client's read routing); JetStream: a
//     direct get (AllowDirect).
//   - fetch: batches of up to Config.ReadMax (1000) records, in order,
//     from the start again at the end. natlog: client.Fetch;
//     JetStream: an ordered consumer's Fetch (a new consumer per pass).
//   - consume: stream the pre-filled log from offset 0 to its end, again
//     and again. natlog: client.Consume (batch reads, the next one
//     fetched while the current one is delivered);
//     JetStream: a new ordered consumer's Consume callback per pass (not
//     its Messages iterator, which in a cluster can stall 10 s when a new
//     consumer's first pull finds no responders, where Consume resets the
//     consumer at once).
//
// All natlog traffic goes through target (natlog.go), which uses natlog's
// Go client package, so the figures are what an application gets.
//
// # Figures
//
// Per system, scenario and round: records/s, MB/s (10^6 bytes of record
// values), latency percentiles p50, p90, p99 and p99.9 of one operation
// (an append, a batch append, a read, a batch read; for consume the time
// per Config.ReadMax records received) from an HDR histogram (1 µs to 1
// min, 3 significant digits), server CPU seconds and peak RSS. Over the
// rounds: the median, minimum and maximum of each figure, and the ratio of
// natlog's median to JetStream's (higher is better for throughput, lower
// for latency, CPU and memory).
//
// Results go to a table (WriteTable), a JSON file (Results) and a chart
// (WriteChart, PNG or SVG: per mode, records/s and p50/p99 latency per
// scenario for both systems).
package bench
