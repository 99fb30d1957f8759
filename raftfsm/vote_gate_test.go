package raftfsm

import (
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// noPreVote is a transport without raft.WithPreVote.
type noPreVote struct{ raft.Transport }

// A vote gate answers the vote requests its rule refuses itself (not
// granted, in the candidate's term), passes the others and every other RPC
// on to Raft, and offers pre-vote only when its inner transport does.
func TestVoteGate(t *testing.T) {
	for _, tc := range []struct {
		name    string
		allow   bool
		preVote bool
	}{
		{"vote refused", false, false},
		{"vote allowed", true, false},
		{"pre-vote refused", false, true},
		{"pre-vote allowed", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			candAddr, cand := raft.NewInmemTransport("cand")
			voterAddr, voter := raft.NewInmemTransport("voter")
			cand.Connect(voterAddr, voter)
			var asked []raft.ServerID
			gate := NewVoteGate(voter, func(c raft.ServerID, pre bool) bool {
				if pre != tc.preVote {
					t.Errorf("rule called with preVote %v, want %v", pre, tc.preVote)
				}
				asked = append(asked, c)
				return tc.allow
			})
			defer gate.Close()
			// Raft's side of the voter: grant whatever reaches it.
			reached := make(chan any, 1)
			go func() {
				for rpc := range gate.Consumer() {
					reached <- rpc.Command
					switch req := rpc.Command.(type) {
					case *raft.RequestVoteRequest:
						rpc.Respond(&raft.RequestVoteResponse{Term: req.Term, Granted: true}, nil)
					case *raft.RequestPreVoteRequest:
						rpc.Respond(&raft.RequestPreVoteResponse{Term: req.Term, Granted: true}, nil)
					case *raft.AppendEntriesRequest:
						rpc.Respond(&raft.AppendEntriesResponse{Term: req.Term, Success: true}, nil)
					}
				}
			}()
			header := raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte("cand"), Addr: []byte(candAddr)}
			var granted bool
			var term uint64
			if tc.preVote {
				var resp raft.RequestPreVoteResponse
				if err := cand.RequestPreVote("voter", voterAddr, &raft.RequestPreVoteRequest{RPCHeader: header, Term: 7}, &resp); err != nil {
					t.Fatal(err)
				}
				granted, term = resp.Granted, resp.Term
			} else {
				var resp raft.RequestVoteResponse
				if err := cand.RequestVote("voter", voterAddr, &raft.RequestVoteRequest{RPCHeader: header, Term: 7}, &resp); err != nil {
					t.Fatal(err)
				}
				granted, term = resp.Granted, resp.Term
			}
			if granted != tc.allow || term != 7 {
				t.Errorf("granted %v in term %d, want %v in term 7", granted, term, tc.allow)
			}
			if len(asked) != 1 || asked[0] != "cand" {
				t.Errorf("rule asked about %v, want [cand]", asked)
			}
			if tc.allow {
				<-reached
			} else {
				select {
				case cmd := <-reached:
					t.Errorf("a refused vote reached Raft: %T", cmd)
				default:
				}
			}
			// Everything else passes whatever the rule says.
			var ae raft.AppendEntriesResponse
			if err := cand.AppendEntries("voter", voterAddr, &raft.AppendEntriesRequest{RPCHeader: header, Term: 7}, &ae); err != nil || !ae.Success {
				t.Errorf("append entries through the gate: %v, success %v", err, ae.Success)
			}
			if _, ok := (<-reached).(*raft.AppendEntriesRequest); !ok {
				t.Error("append entries did not reach Raft")
			}
		})
	}
}

func TestVoteGatePreVoteOnlyIfInnerHasIt(t *testing.T) {
	_, inmem := raft.NewInmemTransport("a")
	g := NewVoteGate(inmem, func(raft.ServerID, bool) bool { return true })
	if _, ok := g.(raft.WithPreVote); !ok {
		t.Error("gate over a pre-vote transport does not offer pre-vote")
	}
	g.Close()
	_, inmem2 := raft.NewInmemTransport("b")
	g2 := NewVoteGate(noPreVote{inmem2}, func(raft.ServerID, bool) bool { return true })
	if _, ok := g2.(raft.WithPreVote); ok {
		t.Error("gate over a transport without pre-vote offers pre-vote")
	}
	// Close returns although nobody consumes: the gate's goroutine exits.
	closed := make(chan struct{})
	go func() { g2.Close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not return")
	}
}
