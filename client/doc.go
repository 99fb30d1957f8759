// Package client is natlog's Go client: it appends to and reads from a
// natlog node or cluster over NATS, and does what the protocol leaves to
// clients.
//
//	nc, _ := nats.Connect(nats.DefaultURL)
//	c, err := client.Connect(nc)          // asks the cluster who is in it
//	off, err := c.Append(ctx, "orders", []byte("hello"))
//	rec, err := c.Read(ctx, "orders", off)
//	err = c.Consume(ctx, "orders", func(r client.Record) error { ...; return nil })
//
// Routing. Appends go to the leader: only the leader subscribes to the
// append subjects, so NATS delivers them there. Reads go to a replica the
// client picks, round-robin over the followers and read replicas (the
// leader only when it is alone), or to a preferred node or host
// (WithPreferredNode, WithPreferredHost; the leader too when it is the
// preferred one), on the node's own subjects
// (<prefix>.node.<id>.read.<log>). The client learns the membership and
// the leader from the nodes' status replies, every WithRefreshInterval and
// after any failure.
//
// Retries. Every append carries a Natlog-Msg-Id ("<producer>-<sequence>"),
// so the client retries appends after a timeout, "no responders" (an
// election), or "not leader", with jittered exponential backoff, within
// the context's deadline, and a retry is never written twice: once an
// attempt may have been written, retries stop after WithRetryWindow (90 s
// from the first attempt), inside the nodes' dedup window. When the call
// fails, the *Error says whether the outcome is definite (nothing written)
// or indefinite (IsIndefinite: some attempt may have been written; retry
// WithMsgID to be sure).
//
// Read-your-writes. A replica answers from what it has applied, which may
// be behind the leader. In a cluster every append result carries the Raft
// index of its entry (AppendResult.Index, AppendFuture.Index), and the
// client keeps the highest (LastIndex). A Fetch with that index as
// FetchOptions.MinIndex is answered, by whichever replica, only once that
// replica holds the append:
//
//	r, err := c.AppendBatch(ctx, "orders", recs)
//	b, err := c.Fetch(ctx, "orders", r.First, client.FetchOptions{MinIndex: r.Index})
//
// An offset cannot do this (FetchOptions.MinOffset): a replica that has
// not yet seen the log deleted and created again holds the old log, whose
// offsets may reach it. Read does not wait for an index.
//
// Batching. AppendAsync queues records and sends each log's queue as
// batches, one request in flight per log, so that a busy producer pays one
// round trip and one fsync per batch, and the records of one client keep
// their order. AppendBatch sends one atomic batch.
//
// Consuming. Consume (or the Records iterator) delivers every record from
// a starting offset or time in order, long-polling at the end of the log,
// and goes on through failures from the offset after the last record it
// delivered: a replica that is behind waits until it holds that offset
// (the read request's min_offset) and the history its earlier replies
// came from (min_index), so nothing is skipped or repeated.
//
// The package imports nothing of the server but the wire types in
// sidecar/protocol.
package client
