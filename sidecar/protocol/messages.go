package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// Headers are a record's headers, as NATS headers are: a key may have
// several values, kept in order. Keys are case-sensitive.
type Headers = map[string][]string

// AppendRecord is one record of a batch append.
type AppendRecord struct {
	Headers Headers `json:"headers,omitempty" msgpack:"headers,omitempty"`
	Value   []byte  `json:"value" msgpack:"value"`
}

// AppendBatchRequest is the msgpack body of an append with Content-Type
// application/msgpack: records appended atomically, in order, with
// consecutive offsets. It must hold at least one record.
type AppendBatchRequest struct {
	Records []AppendRecord `json:"records" msgpack:"records"`
}

// AppendReply answers a single-record append (JSON):
// {"log":"orders","offset":42}.
type AppendReply struct {
	Log    string `json:"log" msgpack:"log"`
	Offset uint64 `json:"offset" msgpack:"offset"`
	// Duplicate is true if the append carried a Natlog-Msg-Id the log
	// had already seen: nothing was written and Offset is the first
	// append's.
	Duplicate bool `json:"duplicate,omitempty" msgpack:"duplicate,omitempty"`
	// Index (cluster mode) is the Raft index of the entry that applied
	// the append (for a duplicate: the retry's entry, which comes after
	// the first append's). A read with ReadRequest.MinIndex set to it sees
	// the append on any replica, and nothing older than it. 0 (absent)
	// from a standalone node.
	Index uint64 `json:"index,omitempty" msgpack:"index,omitempty"`
}

// AppendBatchReply answers a batch append (JSON):
// {"log":"orders","first":42,"last":141,"count":100}.
type AppendBatchReply struct {
	Log       string `json:"log" msgpack:"log"`
	First     uint64 `json:"first" msgpack:"first"`
	Last      uint64 `json:"last" msgpack:"last"`
	Count     int    `json:"count" msgpack:"count"`
	Duplicate bool   `json:"duplicate,omitempty" msgpack:"duplicate,omitempty"`
	// Index is as in AppendReply.
	Index uint64 `json:"index,omitempty" msgpack:"index,omitempty"`
}

// ReadRequest is the JSON or msgpack body of a batch read: records from
// Offset, at most Max of them and about MaxBytes of record data (the first
// record is always returned whatever its size). If Offset is the log's end,
// the read waits up to WaitMs milliseconds for a record to arrive (long
// polling) and then answers with what there is, possibly nothing. Zero
// fields take the node's defaults (see the protocol document).
type ReadRequest struct {
	Offset   uint64 `json:"offset" msgpack:"offset"`
	Max      int    `json:"max,omitempty" msgpack:"max,omitempty"`
	MaxBytes int    `json:"max_bytes,omitempty" msgpack:"max_bytes,omitempty"`
	WaitMs   int64  `json:"wait_ms,omitempty" msgpack:"wait_ms,omitempty"`
	// MinOffset (cluster mode), if set, makes a replica wait (up to the
	// node's max read wait) until it holds the record at MinOffset before
	// it reads: read-your-writes for a client that appended it. A replica
	// that does not get there in time answers ErrUnavailable.
	MinOffset *uint64 `json:"min_offset,omitempty" msgpack:"min_offset,omitempty"`
	// MinIndex (cluster mode), if not 0, makes a replica wait (up to the
	// node's max read wait) until it has applied the Raft log up to
	// MinIndex before it reads: an Index from an append reply (or a read
	// reply) names a point in the replicated history, so the read sees
	// that append, and no log that was deleted before it, whatever
	// happened to the log's name meanwhile. MinOffset cannot tell a log
	// from an older one of the same name. A replica that does not get
	// there in time answers ErrUnavailable. A standalone node has no
	// Raft log and ignores it.
	MinIndex uint64 `json:"min_index,omitempty" msgpack:"min_index,omitempty"`
	// Linearizable (cluster mode) makes the replica confirm with the
	// leader (a Raft barrier on the leader, the leader's commit index
	// elsewhere) that it has applied everything committed before the read
	// started. It costs a round trip to the leader.
	Linearizable bool `json:"linearizable,omitempty" msgpack:"linearizable,omitempty"`
	// StartTime, if set (Unix nanoseconds), makes the read start at the
	// first record whose timestamp is at or after it, instead of at
	// Offset (the log's end if there is none): a consumer that starts
	// from a point in time.
	StartTime *int64 `json:"start_time,omitempty" msgpack:"start_time,omitempty"`
}

// Record is one record of a batch read reply.
type Record struct {
	Offset  uint64  `json:"offset" msgpack:"offset"`
	Time    int64   `json:"time" msgpack:"time"` // Unix nanoseconds
	Headers Headers `json:"headers,omitempty" msgpack:"headers,omitempty"`
	Value   []byte  `json:"value" msgpack:"value"`
}

// ReadReply answers a batch read (msgpack, or JSON if asked with Accept).
type ReadReply struct {
	Log     string   `json:"log" msgpack:"log"`
	Records []Record `json:"records" msgpack:"records"`
	// Next is the offset to ask for next: one past the last record
	// returned, or the request's offset if none was.
	Next uint64 `json:"next" msgpack:"next"`
	// Lowest and End are the log's lowest offset and end offset (the
	// offset the next append will get) when the reply was made.
	Lowest uint64 `json:"lowest" msgpack:"lowest"`
	End    uint64 `json:"end" msgpack:"end"`
	// Index (cluster mode) is the Raft index the replica's FSM had
	// applied when it made the reply, taken after the read: a MinIndex
	// for the next read, so that a reader that moves to another replica
	// never reads from an older history of the log. (A record of an entry
	// still being applied may be in the reply too, beyond Index: a
	// reader that goes on from it sends MinOffset as well.) 0 (absent)
	// from a standalone node.
	Index uint64 `json:"index,omitempty" msgpack:"index,omitempty"`
}

// LogSettings are a log's own settings, given when it is created with the
// create subject. An absent (nil) field takes the node's default; zero
// retention values mean "no bound".
type LogSettings struct {
	// MaxSegmentBytes is the size at which a new segment starts.
	MaxSegmentBytes *int64 `json:"max_segment_bytes,omitempty" msgpack:"max_segment_bytes,omitempty"`
	// Sync is the durability policy: "always", "interval" or "never".
	Sync *string `json:"sync,omitempty" msgpack:"sync,omitempty"`
	// RetentionBytes bounds the total size of the log's segments.
	RetentionBytes *int64 `json:"retention_bytes,omitempty" msgpack:"retention_bytes,omitempty"`
	// RetentionAgeMs removes segments whose newest record is older.
	RetentionAgeMs *int64 `json:"retention_age_ms,omitempty" msgpack:"retention_age_ms,omitempty"`
	// RetentionSegments bounds the number of segments.
	RetentionSegments *int `json:"retention_segments,omitempty" msgpack:"retention_segments,omitempty"`
}

// LogInfo describes a log (the info subject's reply; also in LogsReply).
type LogInfo struct {
	Log         string `json:"log"`
	FirstOffset uint64 `json:"first_offset"`
	// LastOffset is absent when the log is empty.
	LastOffset        *uint64 `json:"last_offset,omitempty"`
	NextOffset        uint64  `json:"next_offset"`
	Records           uint64  `json:"records"`
	Segments          int     `json:"segments"`
	Bytes             int64   `json:"bytes"`
	Sync              string  `json:"sync"`
	MaxSegmentBytes   int64   `json:"max_segment_bytes"`
	RetentionBytes    int64   `json:"retention_bytes"`
	RetentionAgeMs    int64   `json:"retention_age_ms"`
	RetentionSegments int     `json:"retention_segments"`
	// Settings are the log's own settings; what they leave out follows
	// the node's defaults.
	Settings LogSettings `json:"settings"`
	// Created is when the log was created, Unix nanoseconds.
	Created int64 `json:"created"`
	// CreatedIndex (cluster mode) is the Raft index of the entry that
	// created the log (a create, or its first append): it tells this log
	// from an older one of the same name (deleted and created again),
	// and as a ReadRequest.MinIndex it makes a replica wait until it
	// holds this log. Absent from a standalone node.
	CreatedIndex uint64 `json:"created_index,omitempty"`
	// Error is set (and the other fields are zero) for a log that failed
	// to open and is out of service: why.
	Error string `json:"error,omitempty"`
}

// LogsReply answers the logs subject: every log, sorted by name.
type LogsReply struct {
	Logs []LogInfo `json:"logs"`
}

// DeleteReply answers the delete subject.
type DeleteReply struct {
	Log     string `json:"log"`
	Deleted bool   `json:"deleted"`
	// Index (cluster mode) is the Raft index of the delete: a read with
	// it as ReadRequest.MinIndex no longer finds the deleted log.
	Index uint64 `json:"index,omitempty"`
}

// Peer is one member of the cluster in ClusterStatus.
type Peer struct {
	ID       string `json:"id"`
	Address  string `json:"address,omitempty"`
	State    string `json:"state"` // "leader", "follower", "candidate", ...
	Voter    bool   `json:"voter"`
	Role     string `json:"role,omitempty"` // "voter" or "nonvoter" (cluster mode)
	LagIndex uint64 `json:"lag_index"`      // how far its log is behind the leader's commit index
	// Host is the name of the machine the node runs on (as it reports
	// it), so that a client can prefer a replica on its own host.
	Host string `json:"host,omitempty"`
	// Reads counts the read requests the node has answered successfully
	// since it started (as of its last announcement, for other nodes).
	Reads uint64 `json:"reads"`
}

// ClusterStatus answers the cluster status subject.
type ClusterStatus struct {
	NodeID       string `json:"node_id"`
	Leader       string `json:"leader"`
	State        string `json:"state"` // this node's state
	Mode         string `json:"mode"`  // "single" or "cluster"
	Cluster      string `json:"cluster,omitempty"`
	Term         uint64 `json:"term"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	Peers        []Peer `json:"peers"`
	Logs         int    `json:"logs"`
	// MaxRecordBytes is the largest record (value plus headers) this
	// node takes; larger ones are refused with ErrPayloadTooLarge.
	MaxRecordBytes int64  `json:"max_record_bytes"`
	Prefix         string `json:"prefix"`
	Version        string `json:"version"`
	StartedAt      int64  `json:"started_at"` // Unix nanoseconds
}

// AppendJSON appends r as JSON. Log names need no escaping.
func (r *AppendReply) AppendJSON(b []byte) []byte {
	b = append(b, `{"log":`...)
	b = strconv.AppendQuote(b, r.Log)
	b = append(b, `,"offset":`...)
	b = strconv.AppendUint(b, r.Offset, 10)
	if r.Duplicate {
		b = append(b, `,"duplicate":true`...)
	}
	if r.Index != 0 {
		b = append(b, `,"index":`...)
		b = strconv.AppendUint(b, r.Index, 10)
	}
	return append(b, '}')
}

// AppendJSON appends r as JSON.
func (r *AppendBatchReply) AppendJSON(b []byte) []byte {
	b = append(b, `{"log":`...)
	b = strconv.AppendQuote(b, r.Log)
	b = append(b, `,"first":`...)
	b = strconv.AppendUint(b, r.First, 10)
	b = append(b, `,"last":`...)
	b = strconv.AppendUint(b, r.Last, 10)
	b = append(b, `,"count":`...)
	b = strconv.AppendInt(b, int64(r.Count), 10)
	if r.Duplicate {
		b = append(b, `,"duplicate":true`...)
	}
	if r.Index != 0 {
		b = append(b, `,"index":`...)
		b = strconv.AppendUint(b, r.Index, 10)
	}
	return append(b, '}')
}

// AppendMsgpack appends r's msgpack encoding:
// map{"records": array of map{"headers"?: map<str, array<str>>, "value": bin}}.
func (r *AppendBatchRequest) AppendMsgpack(b []byte) []byte {
	b = appendMapLen(b, 1)
	b = appendString(b, "records")
	b = appendArrayLen(b, len(r.Records))
	for i := range r.Records {
		rec := &r.Records[i]
		if len(rec.Headers) > 0 {
			b = appendMapLen(b, 2)
			b = appendString(b, "headers")
			b = appendHeaders(b, rec.Headers)
		} else {
			b = appendMapLen(b, 1)
		}
		b = appendString(b, "value")
		b = appendBin(b, rec.Value)
	}
	return b
}

// MaxBatchRecords bounds the records of one batch append.
const MaxBatchRecords = 100_000

// DecodeAppendBatch decodes a msgpack AppendBatchRequest. The values alias
// body. Errors are ErrMalformedBody (a batch of no records is one), or
// ErrPayloadTooLarge for more than MaxBatchRecords records.
func DecodeAppendBatch(body []byte) (AppendBatchRequest, error) {
	var req AppendBatchRequest
	r := reader{b: body}
	n, err := r.mapLen()
	if err != nil {
		return req, malformed("batch", err)
	}
	for range n {
		k, err := r.str()
		if err != nil {
			return req, malformed("batch", err)
		}
		if k != "records" {
			return req, malformed("batch", unknownField(k))
		}
		m, err := r.arrayLen()
		if err != nil {
			return req, malformed("batch records", err)
		}
		if m > MaxBatchRecords {
			return AppendBatchRequest{}, Errorf(ErrPayloadTooLarge, "batch of %d records: at most %d in one append", m, MaxBatchRecords)
		}
		// Grown as records decode, not sized by the declared count: a
		// body of empty maps would otherwise cost ~50 times its size.
		req.Records = make([]AppendRecord, 0, min(m, 1024))
		for i := range m {
			req.Records = append(req.Records, AppendRecord{})
			if err := decodeAppendRecord(&r, &req.Records[i]); err != nil {
				return AppendBatchRequest{}, malformed(fmt.Sprintf("batch record %d", i), err)
			}
		}
	}
	if !r.done() {
		return AppendBatchRequest{}, malformed("batch", fmt.Errorf("%d bytes after the body", r.remaining()))
	}
	if len(req.Records) == 0 {
		return AppendBatchRequest{}, Errorf(ErrMalformedBody, "malformed batch: no records")
	}
	return req, nil
}

func decodeAppendRecord(r *reader, rec *AppendRecord) error {
	n, err := r.mapLen()
	if err != nil {
		return err
	}
	for range n {
		k, err := r.str()
		if err != nil {
			return err
		}
		switch k {
		case "value":
			rec.Value, err = r.bytes()
		case "headers":
			rec.Headers, err = r.headers()
		default:
			err = unknownField(k)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// AppendMsgpack appends r's msgpack encoding: a map with "offset" and the
// fields that are set.
func (r *ReadRequest) AppendMsgpack(b []byte) []byte {
	n := 1
	for _, v := range []int64{int64(r.Max), int64(r.MaxBytes), r.WaitMs} {
		if v != 0 {
			n++
		}
	}
	if r.MinOffset != nil {
		n++
	}
	if r.MinIndex != 0 {
		n++
	}
	if r.Linearizable {
		n++
	}
	if r.StartTime != nil {
		n++
	}
	b = appendMapLen(b, n)
	b = appendUint(appendString(b, "offset"), r.Offset)
	if r.MinOffset != nil {
		b = appendUint(appendString(b, "min_offset"), *r.MinOffset)
	}
	if r.MinIndex != 0 {
		b = appendUint(appendString(b, "min_index"), r.MinIndex)
	}
	if r.Linearizable {
		b = appendBool(appendString(b, "linearizable"), true)
	}
	if r.StartTime != nil {
		b = appendInt(appendString(b, "start_time"), *r.StartTime)
	}
	if r.Max != 0 {
		b = appendInt(appendString(b, "max"), int64(r.Max))
	}
	if r.MaxBytes != 0 {
		b = appendInt(appendString(b, "max_bytes"), int64(r.MaxBytes))
	}
	if r.WaitMs != 0 {
		b = appendInt(appendString(b, "wait_ms"), r.WaitMs)
	}
	return b
}

// DecodeReadRequest decodes a msgpack ReadRequest. Errors are
// ErrMalformedBody.
func DecodeReadRequest(body []byte) (ReadRequest, error) {
	var req ReadRequest
	r := reader{b: body}
	n, err := r.mapLen()
	if err != nil {
		return req, malformed("read request", err)
	}
	for range n {
		k, err := r.str()
		if err != nil {
			return req, malformed("read request", err)
		}
		if k != "offset" && r.isNil() {
			continue // an absent optional field
		}
		switch k {
		case "offset":
			req.Offset, err = r.uint64()
		case "max":
			req.Max, err = r.int()
		case "max_bytes":
			req.MaxBytes, err = r.int()
		case "wait_ms":
			var v int
			v, err = r.int()
			req.WaitMs = int64(v)
		case "min_offset":
			var v uint64
			v, err = r.uint64()
			req.MinOffset = &v
		case "min_index":
			req.MinIndex, err = r.uint64()
		case "linearizable":
			req.Linearizable, err = r.bool()
		case "start_time":
			var v int64
			v, err = r.int64()
			req.StartTime = &v
		default:
			err = unknownField(k)
		}
		if err != nil {
			return ReadRequest{}, malformed("read request field "+strconv.Quote(k), err)
		}
	}
	if !r.done() {
		return ReadRequest{}, malformed("read request", fmt.Errorf("%d bytes after the body", r.remaining()))
	}
	return req, nil
}

// ParseReadRequestJSON decodes a JSON ReadRequest strictly: unknown fields
// and trailing data are errors (ErrMalformedBody).
func ParseReadRequestJSON(body []byte) (ReadRequest, error) {
	var req ReadRequest
	if err := decodeJSONStrict(body, &req); err != nil {
		return ReadRequest{}, malformed("read request", err)
	}
	for _, v := range []int64{int64(req.Max), int64(req.MaxBytes), req.WaitMs} {
		if v < 0 || v > math.MaxInt32 {
			return ReadRequest{}, Errorf(ErrMalformedBody, "malformed read request: max, max_bytes and wait_ms must be in [0, %d]", math.MaxInt32)
		}
	}
	return req, nil
}

// ParseLogSettings decodes a create request's body: JSON, or msgpack if
// isMsgpack. An empty body means all node defaults.
func ParseLogSettings(body []byte, isMsgpack bool) (LogSettings, error) {
	var s LogSettings
	if len(bytes.TrimSpace(body)) == 0 {
		return s, nil
	}
	if isMsgpack {
		return decodeLogSettings(body)
	}
	if err := decodeJSONStrict(body, &s); err != nil {
		return LogSettings{}, malformed("log settings", err)
	}
	return s, nil
}

func decodeLogSettings(body []byte) (LogSettings, error) {
	var s LogSettings
	r := reader{b: body}
	n, err := r.mapLen()
	if err != nil {
		return s, malformed("log settings", err)
	}
	for range n {
		k, err := r.str()
		if err != nil {
			return LogSettings{}, malformed("log settings", err)
		}
		if r.isNil() {
			continue
		}
		var v int64
		switch k {
		case "sync":
			var str string
			if str, err = r.str(); err == nil {
				s.Sync = &str
			}
		case "max_segment_bytes", "retention_bytes", "retention_age_ms", "retention_segments":
			if v, err = r.int64(); err != nil {
				break
			}
			switch k {
			case "max_segment_bytes":
				s.MaxSegmentBytes = &v
			case "retention_bytes":
				s.RetentionBytes = &v
			case "retention_age_ms":
				s.RetentionAgeMs = &v
			default:
				iv := int(v)
				if int64(iv) != v {
					err = fmt.Errorf("retention_segments %d out of range", v)
					break
				}
				s.RetentionSegments = &iv
			}
		default:
			err = unknownField(k)
		}
		if err != nil {
			return LogSettings{}, malformed("log settings field "+strconv.Quote(k), err)
		}
	}
	if !r.done() {
		return LogSettings{}, malformed("log settings", fmt.Errorf("%d bytes after the body", r.remaining()))
	}
	return s, nil
}

func decodeJSONStrict(body []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(body))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return fmt.Errorf("data after the JSON value")
	}
	return nil
}

// RecordSize returns the exact size of rec in a msgpack ReadReply.
func RecordSize(rec *Record) int {
	n := 1 + strSize(len("offset")) + uintSize(rec.Offset) +
		strSize(len("time")) + intSize(rec.Time) +
		strSize(len("value")) + binSize(len(rec.Value))
	if len(rec.Headers) > 0 {
		n += strSize(len("headers")) + headersSize(rec.Headers)
	}
	return n
}

// ReadReplyOverhead bounds the size of a msgpack ReadReply other than its
// records' (RecordSize each), for a log name of up to MaxLogNameLen: 206
// bytes at most, rounded up.
const ReadReplyOverhead = 256

// AppendMsgpack appends r's msgpack encoding: map{"log": str, "records":
// array of map{"offset": uint, "time": int, "headers"?: map<str,
// array<str>>, "value": bin}, "next": uint, "lowest": uint, "end": uint,
// "index"?: uint}; "index" only if not 0.
func (r *ReadReply) AppendMsgpack(b []byte) []byte {
	if r.Index != 0 {
		b = appendMapLen(b, 6)
	} else {
		b = appendMapLen(b, 5)
	}
	b = appendString(appendString(b, "log"), r.Log)
	b = appendArrayLen(appendString(b, "records"), len(r.Records))
	for i := range r.Records {
		rec := &r.Records[i]
		if len(rec.Headers) > 0 {
			b = appendMapLen(b, 4)
		} else {
			b = appendMapLen(b, 3)
		}
		b = appendUint(appendString(b, "offset"), rec.Offset)
		b = appendInt(appendString(b, "time"), rec.Time)
		if len(rec.Headers) > 0 {
			b = appendHeaders(appendString(b, "headers"), rec.Headers)
		}
		b = appendBin(appendString(b, "value"), rec.Value)
	}
	b = appendUint(appendString(b, "next"), r.Next)
	b = appendUint(appendString(b, "lowest"), r.Lowest)
	b = appendUint(appendString(b, "end"), r.End)
	if r.Index != 0 {
		b = appendUint(appendString(b, "index"), r.Index)
	}
	return b
}

// DecodeReadReply decodes a msgpack ReadReply. The values alias body.
func DecodeReadReply(body []byte) (ReadReply, error) {
	var rep ReadReply
	r := reader{b: body}
	n, err := r.mapLen()
	if err != nil {
		return rep, malformed("read reply", err)
	}
	for range n {
		k, err := r.str()
		if err != nil {
			return ReadReply{}, malformed("read reply", err)
		}
		switch k {
		case "log":
			rep.Log, err = r.str()
		case "next":
			rep.Next, err = r.uint64()
		case "lowest":
			rep.Lowest, err = r.uint64()
		case "end":
			rep.End, err = r.uint64()
		case "index":
			rep.Index, err = r.uint64()
		case "records":
			var m int
			if m, err = r.arrayLen(); err != nil {
				break
			}
			rep.Records = make([]Record, m)
			for i := range m {
				if err = decodeRecord(&r, &rep.Records[i]); err != nil {
					break
				}
			}
		default:
			// Ignore fields a newer server may add.
			err = r.skip()
		}
		if err != nil {
			return ReadReply{}, malformed("read reply field "+strconv.Quote(k), err)
		}
	}
	return rep, nil
}

func decodeRecord(r *reader, rec *Record) error {
	n, err := r.mapLen()
	if err != nil {
		return err
	}
	for range n {
		k, err := r.str()
		if err != nil {
			return err
		}
		switch k {
		case "offset":
			rec.Offset, err = r.uint64()
		case "time":
			rec.Time, err = r.int64()
		case "value":
			rec.Value, err = r.bytes()
		case "headers":
			rec.Headers, err = r.headers()
		default:
			err = r.skip()
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func decodeErrorMsgpack(body []byte) (*Error, error) {
	r := reader{b: body}
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	var e *Error
	for range n {
		k, err := r.str()
		if err != nil {
			return nil, err
		}
		if k != "error" {
			if err := r.skip(); err != nil {
				return nil, err
			}
			continue
		}
		m, err := r.mapLen()
		if err != nil {
			return nil, err
		}
		e = &Error{}
		for range m {
			f, err := r.str()
			if err != nil {
				return nil, err
			}
			var v int64
			switch f {
			case "code":
				v, err = r.int64()
				e.Code = int(v)
			case "err_code":
				v, err = r.int64()
				e.ErrCode = ErrCode(v)
			case "description":
				e.Description, err = r.str()
			default:
				err = r.skip()
			}
			if err != nil {
				return nil, err
			}
		}
	}
	if e == nil {
		return nil, fmt.Errorf("no error field")
	}
	return e, nil
}

// ParseReadBody decodes a read request body. With Content-Type msgpack it
// is a msgpack ReadRequest; a body starting with '{' is a JSON ReadRequest;
// otherwise it must be an offset in decimal ("42", surrounding space
// allowed), a single-record read (single is true). Errors are
// ErrMalformedBody.
func ParseReadBody(body []byte, contentType string) (req ReadRequest, single bool, err error) {
	if contentType == ContentTypeMsgpack {
		req, err = DecodeReadRequest(body)
		return req, false, err
	}
	t := bytes.TrimSpace(body)
	if len(t) == 0 {
		return req, false, Errorf(ErrMalformedBody, `empty read request: want an offset such as 42, or {"offset":42,"max":100}`)
	}
	if t[0] == '{' {
		req, err = ParseReadRequestJSON(t)
		return req, false, err
	}
	off, err := strconv.ParseUint(string(t), 10, 64)
	if err != nil {
		if len(t) > 64 {
			t = append(t[:64:64], "..."...)
		}
		return req, false, Errorf(ErrMalformedBody, `malformed read request %q: want an offset such as 42, or {"offset":42,"max":100}`, t)
	}
	return ReadRequest{Offset: off}, true, nil
}
