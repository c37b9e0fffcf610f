package consensus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/pgha/pgha/pki"
)

// genCerts writes a CA for cluster and a certificate for 127.0.0.1 per id
// into a new directory. Two calls make two unrelated CAs.
func genCerts(t *testing.T, cluster string, ids ...string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	nodes := map[string][]string{}
	for _, id := range ids {
		nodes[id] = []string{"127.0.0.1"}
	}
	if err := pki.GenerateCluster(dir, cluster, nodes); err != nil {
		t.Fatalf("generate certificates: %v", err)
	}
	return dir
}

func tlsConfigs(t *testing.T, certDir, id string) (server, client *tls.Config) {
	t.Helper()
	f := pki.Files(certDir, id)
	server, err := f.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	client, err = f.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return server, client
}

// refusals counts the node's "TLS handshake failed" log records: each is a
// connection the node refused. It passes every record on to testLogger.
type refusals struct {
	n    *atomic.Int64
	next slog.Handler
}

const refusedMsg = "raft connection refused: TLS handshake failed"

func newRefusals() refusals {
	return refusals{n: new(atomic.Int64), next: testLogger().Handler()}
}

func (r refusals) Count() int64                             { return r.n.Load() }
func (r refusals) Enabled(context.Context, slog.Level) bool { return true }
func (r refusals) WithAttrs(as []slog.Attr) slog.Handler    { return refusals{r.n, r.next.WithAttrs(as)} }
func (r refusals) WithGroup(name string) slog.Handler       { return refusals{r.n, r.next.WithGroup(name)} }
func (r refusals) Handle(ctx context.Context, rec slog.Record) error {
	if rec.Message == refusedMsg {
		r.n.Add(1)
	}
	if r.next.Enabled(ctx, rec.Level) {
		return r.next.Handle(ctx, rec)
	}
	return nil
}

// openTLSNode opens node id with the certificate of id from certDir, on a
// free loopback port. The returned refusals counts connections it refused.
func openTLSNode(t *testing.T, id, dir, certDir string) (*Node, refusals) {
	t.Helper()
	cfg := testConfig(id, dir, "127.0.0.1:0")
	cfg.ServerTLS, cfg.ClientTLS = tlsConfigs(t, certDir, id)
	ref := newRefusals()
	cfg.Logger = slog.New(ref)
	n, err := Open(cfg)
	if err != nil {
		t.Fatalf("open %s: %v", id, err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("close %s: %v", id, err)
		}
	})
	return n, ref
}

// tlsCluster starts and bootstraps n1..n3 with certificates from certDir
// and returns them, their refusal counters, and the leader.
func tlsCluster(t *testing.T, certDir string) ([]*Node, []refusals, *Node) {
	t.Helper()
	base := t.TempDir()
	var nodes []*Node
	var refs []refusals
	var servers []Server
	for _, id := range []string{"n1", "n2", "n3"} {
		n, ref := openTLSNode(t, id, filepath.Join(base, id), certDir)
		nodes, refs = append(nodes, n), append(refs, ref)
		servers = append(servers, Server{ID: id, Addr: n.Addr()})
	}
	for _, n := range nodes {
		if err := n.Bootstrap(servers); err != nil && !errors.Is(err, ErrAlreadyBootstrapped) {
			t.Fatalf("bootstrap %s: %v", n.ID(), err)
		}
	}
	return nodes, refs, waitLeader(t, nodes...)
}

func term(t *testing.T, n *Node) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(n.Stats()["term"], 10, 64)
	if err != nil {
		t.Fatalf("term of %s: %v", n.ID(), err)
	}
	return v
}

func TestTLSClusterReplicates(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	certs := genCerts(t, "c1", "n1", "n2", "n3")
	nodes, refs, leader := tlsCluster(t, certs)
	mustApply(t, leader,
		UpsertMember(Member{Name: "n1", PGPort: 5432}),
		InitCluster("c1", "n1"),
	)
	want := leader.State()
	if want.Primary != "n1" || want.Epoch != 1 {
		t.Fatalf("leader state = %+v", want)
	}
	waitSameState(t, want, nodes...)
	for i, r := range refs {
		if c := r.Count(); c != 0 {
			t.Errorf("%s refused %d connections from its own cluster", nodes[i].ID(), c)
		}
	}
}

// TestTLSForeignCANodeCannotJoinOrVote: a node whose certificate comes from
// another CA, even with a member's name and address, gets nothing from the
// cluster and cannot disturb it.
func TestTLSForeignCANodeCannotJoinOrVote(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	certs := genCerts(t, "c1", "n1", "n2", "n3")
	foreign := genCerts(t, "c1", "n4") // same cluster name, different CA
	nodes, refs, leader := tlsCluster(t, certs)
	mustApply(t, leader, InitCluster("c1", leader.ID()))
	n4, n4Refusals := openTLSNode(t, "n4", filepath.Join(t.TempDir(), "n4"), foreign)

	// Join: raft commits the new configuration with three of four voters,
	// so AddVoter itself may succeed, but the leader's connections to n4
	// fail the handshake (each side refuses the other's CA) and n4 never
	// receives the log.
	if err := leader.AddVoter(ctxT(t), n4.ID(), n4.Addr()); err != nil {
		t.Logf("AddVoter: %v", err)
	}
	waitFor(t, waitTimeout, func() error {
		if c := n4Refusals.Count(); c < 3 {
			return fmt.Errorf("n4 refused %d connections from the leader, want >= 3 attempts", c)
		}
		return nil
	})
	mustApply(t, leader, SetPaused(true)) // the cluster still commits without n4
	waitSameState(t, leader.State(), nodes...)
	if n4.HasState() {
		t.Error("n4 has raft state: the leader reached it")
	}
	if got := n4.State(); !reflect.DeepEqual(got, newState()) {
		t.Errorf("n4 FSM is not empty: %+v", got)
	}
	if id, _ := n4.Leader(); id != "" {
		t.Errorf("n4 knows leader %q", id)
	}

	// Vote: n4 believes it is a member and campaigns; every one of its
	// (pre-)vote connections is refused, and the leader and its term stay.
	leaderTerm := term(t, leader)
	before := make([]int64, len(refs))
	for i, r := range refs {
		before[i] = r.Count()
	}
	servers := []Server{{ID: n4.ID(), Addr: n4.Addr()}}
	for _, n := range nodes {
		servers = append(servers, Server{ID: n.ID(), Addr: n.Addr()})
	}
	if err := n4.Bootstrap(servers); err != nil {
		t.Fatalf("bootstrap n4: %v", err)
	}
	waitFor(t, waitTimeout, func() error {
		for i, r := range refs {
			if r.Count() <= before[i] {
				return fmt.Errorf("%s has refused no connection from n4 yet", nodes[i].ID())
			}
		}
		return nil
	})
	if got := waitLeader(t, nodes...); got != leader {
		t.Errorf("leader changed from %s to %s", leader.ID(), got.ID())
	}
	if got := term(t, leader); got != leaderTerm {
		t.Errorf("leader term changed from %d to %d", leaderTerm, got)
	}
	if n4.IsLeader() {
		t.Error("n4 became leader")
	}
	if got := n4.State(); !reflect.DeepEqual(got, newState()) {
		t.Errorf("n4 FSM is not empty after campaigning: %+v", got)
	}
	t.Logf("n4 term %d, leader %s term %d", term(t, n4), leader.ID(), leaderTerm)
}

// dialStream is a raft.StreamLayer that dials with dial: a raft peer from
// outside the cluster, for sending it hand-made RPCs.
type dialStream struct {
	net.Listener
	dial func(addr string) (net.Conn, error)
}

func (d dialStream) Dial(a raft.ServerAddress, _ time.Duration) (net.Conn, error) {
	return d.dial(string(a))
}

func intruder(t *testing.T, dial func(addr string) (net.Conn, error)) *raft.NetworkTransport {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tr := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  dialStream{Listener: ln, dial: dial},
		MaxPool: 1,
		Timeout: 5 * time.Second,
		Logger:  hclog.NewNullLogger(),
	})
	t.Cleanup(func() { tr.Close() })
	return tr
}

// depose sends n the RequestVote that a leader must honour: from a member
// of the configuration (it claims n's own ID, which nothing but TLS would
// check), with a much higher term, a longer log, and LeadershipTransfer set
// so that it is not rejected for having a leader. Accepted, it makes n step
// down.
func depose(t *testing.T, tr *raft.NetworkTransport, n *Node) error {
	t.Helper()
	high := term(t, n) + 100
	req := &raft.RequestVoteRequest{
		RPCHeader:          raft.RPCHeader{ProtocolVersion: raft.ProtocolVersionMax, ID: []byte(n.ID()), Addr: []byte(tr.LocalAddr())},
		Term:               high,
		LastLogIndex:       1 << 40,
		LastLogTerm:        high,
		LeadershipTransfer: true,
	}
	var resp raft.RequestVoteResponse
	return tr.RequestVote(raft.ServerID(n.ID()), raft.ServerAddress(n.Addr()), req, &resp)
}

// TestTLSRefusesUnauthenticatedPeers: a TLS node refuses raft RPCs from a
// plaintext peer and from TLS peers without a certificate of its CA. The
// control case shows that the same RPC, accepted, does depose a leader.
func TestTLSRefusesUnauthenticatedPeers(t *testing.T) {
	if testing.Short() {
		t.Skip("real raft over TCP")
	}
	t.Run("control: plaintext node accepts it", func(t *testing.T) {
		n := openNode(t, "n1", t.TempDir(), "127.0.0.1:0")
		if err := n.Bootstrap([]Server{{ID: "n1", Addr: n.Addr()}}); err != nil {
			t.Fatal(err)
		}
		waitLeader(t, n)
		before := term(t, n)
		tr := intruder(t, func(a string) (net.Conn, error) { return net.Dial("tcp", a) })
		if err := depose(t, tr, n); err != nil {
			t.Fatalf("RequestVote to a plaintext node: %v", err)
		}
		if after := term(t, n); after <= before {
			t.Errorf("term %d -> %d: the intruder's RequestVote had no effect, so the TLS cases prove nothing", before, after)
		}
	})

	certs := genCerts(t, "c1", "n1")
	foreign := genCerts(t, "c1", "n1")
	_, trustCluster := tlsConfigs(t, certs, "n1")
	_, foreignClient := tlsConfigs(t, foreign, "n1")
	noCert := trustCluster.Clone()
	noCert.Certificates = nil
	foreignCert := trustCluster.Clone() // trusts the node, presents a foreign certificate
	foreignCert.Certificates = foreignClient.Certificates

	n, refused := openTLSNode(t, "n1", t.TempDir(), certs)
	if err := n.Bootstrap([]Server{{ID: "n1", Addr: n.Addr()}}); err != nil {
		t.Fatal(err)
	}
	waitLeader(t, n)
	tlsDial := func(c *tls.Config) func(string) (net.Conn, error) {
		return func(a string) (net.Conn, error) { return tls.Dial("tcp", a, c) }
	}
	tests := []struct {
		name string
		dial func(string) (net.Conn, error)
	}{
		{"plaintext", func(a string) (net.Conn, error) { return net.Dial("tcp", a) }},
		{"TLS without a client certificate", tlsDial(noCert)},
		{"TLS with a certificate of another CA", tlsDial(foreignCert)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, count := term(t, n), refused.Count()
			err := depose(t, intruder(t, tt.dial), n)
			if err == nil {
				t.Fatal("RequestVote accepted")
			}
			t.Logf("intruder: %v", err)
			waitFor(t, waitTimeout, func() error {
				if refused.Count() == count {
					return errors.New("the node logged no refused handshake")
				}
				return nil
			})
			if !n.IsLeader() || term(t, n) != before {
				t.Errorf("leader disturbed: leader %v, term %d -> %d", n.IsLeader(), before, term(t, n))
			}
		})
	}
}

func TestTLSConfigValidate(t *testing.T) {
	cert := []tls.Certificate{{Certificate: [][]byte{{1}}}}
	good := func() (*tls.Config, *tls.Config) {
		return &tls.Config{Certificates: cert, ClientAuth: tls.RequireAndVerifyClientCert},
			&tls.Config{Certificates: cert}
	}
	tests := []struct {
		name, wantKey string
		mod           func(s, c *tls.Config) (*tls.Config, *tls.Config)
	}{
		{"server only", "ClientTLS", func(s, c *tls.Config) (*tls.Config, *tls.Config) { return s, nil }},
		{"client only", "ServerTLS", func(s, c *tls.Config) (*tls.Config, *tls.Config) { return nil, c }},
		{"client cert optional", "ServerTLS.ClientAuth", func(s, c *tls.Config) (*tls.Config, *tls.Config) {
			s.ClientAuth = tls.VerifyClientCertIfGiven
			return s, c
		}},
		{"server without cert", "ServerTLS", func(s, c *tls.Config) (*tls.Config, *tls.Config) {
			s.Certificates = nil
			return s, c
		}},
		{"client without cert", "ClientTLS", func(s, c *tls.Config) (*tls.Config, *tls.Config) {
			c.Certificates = nil
			return s, c
		}},
		{"client skips verification", "InsecureSkipVerify", func(s, c *tls.Config) (*tls.Config, *tls.Config) {
			c.InsecureSkipVerify = true
			return s, c
		}},
	}
	cfg := Config{ID: "n1", BindAddr: "127.0.0.1:0", Dir: "/tmp/x"}
	cfg.ServerTLS, cfg.ClientTLS = good()
	if err := cfg.Validate(); err != nil {
		t.Fatalf("valid TLS config: %v", err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cfg
			c.ServerTLS, c.ClientTLS = tt.mod(good())
			if err := c.Validate(); err == nil || !strings.Contains(err.Error(), tt.wantKey) {
				t.Errorf("Validate = %v, want an error naming %s", err, tt.wantKey)
			}
		})
	}
}

// TestTLSOpenRefusesUnadvertisable: as with plain TCP, 0.0.0.0 cannot be
// advertised.
func TestTLSOpenRefusesUnadvertisable(t *testing.T) {
	certs := genCerts(t, "c1", "n1")
	cfg := testConfig("n1", t.TempDir(), "0.0.0.0:0")
	cfg.ServerTLS, cfg.ClientTLS = tlsConfigs(t, certs, "n1")
	if n, err := Open(cfg); err == nil {
		n.Close()
		t.Fatal("Open advertising 0.0.0.0 succeeded")
	}
}
