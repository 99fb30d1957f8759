package sidecar

import (
	"os"
	"strings"
	"testing"

	"github.com/natlog/natlog/internal/testnats"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testnats.Cleanup()
	os.Exit(code)
}

// The commands of the design document, as a user types them, through the
// real nats CLI.
func TestNatsCLI(t *testing.T) {
	cli := testnats.CLI(t)
	s := startNode(t, testConfig(t))
	steps := []struct {
		args []string
		want []string // substrings of the output (headers come in any order)
	}{
		{[]string{"req", "natlog.append.orders", "hello"}, []string{`{"log":"orders","offset":0}`}},
		{[]string{"req", "natlog.append.orders", "world", "-H", "X-Trace:abc"}, []string{`{"log":"orders","offset":1}`}},
		{[]string{"req", "natlog.read.orders", "0"}, []string{"Natlog-Offset: 0", "Natlog-Time: ", "hello"}},
		{[]string{"req", "natlog.read.orders", "1"}, []string{"Natlog-Offset: 1", "X-Trace: abc", "world"}},
		{[]string{"req", "natlog.read.orders", "99"}, []string{"Status: 404", "Description: offset 99 out of range [0, 1]", `"err_code":10011`}},
		{[]string{"req", "natlog.read.nosuch", "0"}, []string{"Status: 404", `unknown log \"nosuch\"`}},
		{[]string{"req", "natlog.read.orders", "zero"}, []string{"Status: 400", `"err_code":10002`}},
		{[]string{"req", "natlog.append.bad$name", "x"}, []string{"Status: 400", `"err_code":10003`}},
		{[]string{"req", "natlog.read.orders", `{"offset":0,"max":10}`, "-H", "Accept:application/json"}, []string{`"records":[{"offset":0,`, `"next":2`}},
		{[]string{"req", "natlog.info.orders", ""}, []string{`"log":"orders"`, `"last_offset":1`, `"records":2`}},
		{[]string{"req", "natlog.create.audit", `{"retention_segments":10}`}, []string{`"log":"audit"`, `"retention_segments":10`}},
		{[]string{"req", "natlog.logs", ""}, []string{`"log":"audit"`, `"log":"orders"`}},
		{[]string{"req", "natlog.cluster.status", ""}, []string{`"state":"leader"`, `"mode":"single"`}},
		{[]string{"req", "natlog.delete.audit", ""}, []string{`{"log":"audit","deleted":true}`}},
		{[]string{"micro", "ls"}, []string{"natlog", "0.0.1-test"}},
		{[]string{"micro", "info", "natlog"}, []string{"Subject: natlog.append.>", "Subject: natlog.read.>", "Subject: natlog.info.>", "Subject: natlog.cluster.status", "Queue Group: natlog"}},
		{[]string{"micro", "stats", "natlog"}, []string{"natlog", "append"}},
	}
	for _, st := range steps {
		out, err := testnats.RunCLI(t, cli, s.NATSURL(), st.args...)
		if err != nil {
			t.Fatalf("nats %s: %v\n%s", strings.Join(st.args, " "), err, out)
		}
		for _, w := range st.want {
			if !strings.Contains(out, w) {
				t.Fatalf("nats %s: output lacks %q:\n%s", strings.Join(st.args, " "), w, out)
			}
		}
	}
}
