package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var testNodes = map[string][]string{
	"node1": {"127.0.0.1", "node1.example"},
	"node2": {"127.0.0.1"},
	"node3": {"127.0.0.1", "::1"},
}

// genCluster generates testNodes for cluster into a new temp dir.
func genCluster(t *testing.T, cluster string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	if err := GenerateCluster(dir, cluster, testNodes); err != nil {
		t.Fatalf("generate %s: %v", cluster, err)
	}
	return dir
}

func serverConfig(t *testing.T, f TLSFiles) *tls.Config {
	t.Helper()
	c, err := f.ServerConfig()
	if err != nil {
		t.Fatalf("server config: %v", err)
	}
	return c
}

func clientConfig(t *testing.T, f TLSFiles) *tls.Config {
	t.Helper()
	c, err := f.ClientConfig()
	if err != nil {
		t.Fatalf("client config: %v", err)
	}
	return c
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := parseCert(b)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	return c
}

// handshake runs one TLS connection over loopback TCP with srv and cli and
// returns each side's connection state and error. The client dials
// 127.0.0.1, so it verifies that IP SAN.
//
// In TLS 1.3 the client's handshake completes before the server has
// checked the client certificate; a rejection reaches the client on its
// first read. So the server writes one byte after a successful handshake and
// the client reads it.
func handshake(t *testing.T, srv, cli *tls.Config) (srvState, cliState tls.ConnectionState, srvErr, cliErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		st  tls.ConnectionState
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		tc := tls.Server(c, srv)
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		_, err = tc.Write([]byte{1})
		done <- result{st: tc.ConnectionState(), err: err}
	}()
	d := &net.Dialer{Timeout: 10 * time.Second}
	cc, cliErr := tls.DialWithDialer(d, "tcp", ln.Addr().String(), cli)
	if cliErr == nil {
		defer cc.Close()
		cc.SetDeadline(time.Now().Add(10 * time.Second))
		if _, cliErr = io.ReadFull(cc, make([]byte, 1)); cliErr == nil {
			cliState = cc.ConnectionState()
		}
	}
	r := <-done
	return r.st, cliState, r.err, cliErr
}

func TestGenerateClusterFiles(t *testing.T) {
	dir := genCluster(t, "prod")
	modes := map[string]fs.FileMode{"ca.crt": 0o644, "ca.key": 0o600}
	for n := range testNodes {
		modes[n+".crt"], modes[n+".key"] = 0o644, 0o600
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(modes) {
		t.Errorf("dir holds %d files, want %d (no temporary files left)", len(entries), len(modes))
	}
	for name, want := range modes {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode %04o, want %04o", name, got, want)
		}
	}

	ca := readCert(t, filepath.Join(dir, "ca.crt"))
	if !ca.IsCA || ca.Subject.Organization[0] != "prod" || ca.PublicKeyAlgorithm != x509.ECDSA {
		t.Errorf("CA: IsCA %v, O %v, key %v", ca.IsCA, ca.Subject.Organization, ca.PublicKeyAlgorithm)
	}
	n1 := readCert(t, filepath.Join(dir, "node1.crt"))
	if n1.Subject.CommonName != "node1" {
		t.Errorf("CN = %q", n1.Subject.CommonName)
	}
	if n1.IsCA {
		t.Error("node certificate is a CA")
	}
	if !slices.Equal(n1.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
		t.Errorf("ExtKeyUsage = %v", n1.ExtKeyUsage)
	}
	if len(n1.IPAddresses) != 1 || !n1.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) || !slices.Equal(n1.DNSNames, []string{"node1.example"}) {
		t.Errorf("SANs: IPs %v, DNS %v", n1.IPAddresses, n1.DNSNames)
	}
	if err := n1.CheckSignatureFrom(ca); err != nil {
		t.Errorf("node1.crt not signed by ca.crt: %v", err)
	}

	loaded, err := LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if loaded.ClusterName() != "prod" || !loaded.cert.Equal(ca) {
		t.Errorf("LoadCA: cluster %q", loaded.ClusterName())
	}
}

func TestGenerateClusterExistingCA(t *testing.T) {
	dir := genCluster(t, "prod")
	caBefore, _ := os.ReadFile(filepath.Join(dir, "ca.key"))

	err := GenerateCluster(dir, "prod", testNodes)
	if !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second GenerateCluster: err = %v, want fs.ErrExist", err)
	}
	if caAfter, _ := os.ReadFile(filepath.Join(dir, "ca.key")); string(caAfter) != string(caBefore) {
		t.Fatal("a refused GenerateCluster changed ca.key")
	}

	// Adding a node with the existing CA: node4 and node1 trust each other.
	err = GenerateClusterWith(dir, "prod", map[string][]string{"node4": {"127.0.0.1"}}, GenerateOptions{ReuseCA: true})
	if err != nil {
		t.Fatalf("ReuseCA: %v", err)
	}
	if _, _, srvErr, cliErr := handshake(t, serverConfig(t, Files(dir, "node1")), clientConfig(t, Files(dir, "node4"))); srvErr != nil || cliErr != nil {
		t.Errorf("node4 (reused CA) to node1: server %v, client %v", srvErr, cliErr)
	}
	err = GenerateClusterWith(dir, "other", testNodes, GenerateOptions{ReuseCA: true})
	if err == nil || !strings.Contains(err.Error(), `"prod"`) {
		t.Errorf("ReuseCA of another cluster's CA: err = %v", err)
	}

	if err := GenerateClusterWith(dir, "prod", testNodes, GenerateOptions{ReplaceCA: true}); err != nil {
		t.Fatalf("ReplaceCA: %v", err)
	}
	if caAfter, _ := os.ReadFile(filepath.Join(dir, "ca.key")); string(caAfter) == string(caBefore) {
		t.Error("ReplaceCA kept the old ca.key")
	}
	// node4 still has a certificate of the old CA: it is now refused.
	if _, err := Files(dir, "node4").ClientConfig(); err == nil {
		t.Error("node4's certificate of the replaced CA loaded against the new ca.crt")
	}
}

func TestGenerateClusterRejectsBadInput(t *testing.T) {
	tests := []struct {
		name  string
		nodes map[string][]string
		want  string
	}{
		{"no nodes", nil, "no nodes"},
		{"no hosts", map[string][]string{"n1": nil}, "no hosts"},
		{"empty host", map[string][]string{"n1": {""}}, "empty host"},
		{"path in name", map[string][]string{"x/n1": {"127.0.0.1"}}, "not allowed"},
		{"hidden name", map[string][]string{".n1": {"127.0.0.1"}}, "starts with"},
		{"name ca", map[string][]string{"ca": {"127.0.0.1"}}, "reserved"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "certs")
			err := GenerateCluster(dir, "c", tt.nodes)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
			if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("a refused GenerateCluster wrote %s", dir)
			}
		})
	}
	if err := GenerateClusterWith(t.TempDir(), "c", testNodes, GenerateOptions{ReuseCA: true, ReplaceCA: true}); err == nil {
		t.Error("ReuseCA and ReplaceCA together accepted")
	}
	ca, err := NewCA("c", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.Issue("n1", []string{"127.0.0.1"}, 2*time.Hour); err == nil || !strings.Contains(err.Error(), "outlasts the CA") {
		t.Errorf("Issue past the CA's expiry: err = %v", err)
	}
}

func TestMutualTLSHandshake(t *testing.T) {
	dir := genCluster(t, "prod")
	srvState, cliState, srvErr, cliErr := handshake(t,
		serverConfig(t, Files(dir, "node1")), clientConfig(t, Files(dir, "node2")))
	if srvErr != nil || cliErr != nil {
		t.Fatalf("handshake: server %v, client %v", srvErr, cliErr)
	}
	if got := PeerName(srvState); got != "node2" {
		t.Errorf("server sees peer %q, want node2", got)
	}
	if got := PeerName(cliState); got != "node1" {
		t.Errorf("client sees peer %q, want node1", got)
	}
	if cliState.Version != tls.VersionTLS13 {
		t.Errorf("version %x, want TLS 1.3", cliState.Version)
	}
	// A certificate that was not verified names nobody.
	if got := PeerName(tls.ConnectionState{PeerCertificates: srvState.PeerCertificates}); got != "" {
		t.Errorf("PeerName of an unverified certificate = %q", got)
	}
}

func TestForeignCARefused(t *testing.T) {
	good, foreign := genCluster(t, "prod"), genCluster(t, "prod") // same names, different CA
	t.Run("client from another CA", func(t *testing.T) {
		// The client trusts the server, so it is the server's check that
		// refuses it.
		cli := clientConfig(t, Files(good, "node2"))
		cli.Certificates = clientConfig(t, Files(foreign, "node2")).Certificates
		_, _, srvErr, cliErr := handshake(t, serverConfig(t, Files(good, "node1")), cli)
		var unknown x509.UnknownAuthorityError
		if !errors.As(srvErr, &unknown) {
			t.Fatalf("server: err = %v, want x509.UnknownAuthorityError", srvErr)
		}
		if cliErr == nil {
			t.Error("client read from a server that refused it")
		}
	})
	t.Run("server from another CA", func(t *testing.T) {
		_, _, srvErr, cliErr := handshake(t, serverConfig(t, Files(foreign, "node1")), clientConfig(t, Files(good, "node2")))
		var unknown x509.UnknownAuthorityError
		if !errors.As(cliErr, &unknown) {
			t.Fatalf("client: err = %v, want x509.UnknownAuthorityError", cliErr)
		}
		if srvErr == nil {
			t.Error("server handshake succeeded with a client that refused it")
		}
	})
	t.Run("client without certificate", func(t *testing.T) {
		cli := clientConfig(t, Files(good, "node2"))
		cli.Certificates = nil
		_, _, srvErr, cliErr := handshake(t, serverConfig(t, Files(good, "node1")), cli)
		if srvErr == nil || cliErr == nil {
			t.Fatalf("handshake: server %v, client %v; want both to fail", srvErr, cliErr)
		}
	})
	t.Run("server at a host not in its SANs", func(t *testing.T) {
		cli := clientConfig(t, Files(good, "node2"))
		cli.ServerName = "node9.example"
		_, _, _, cliErr := handshake(t, serverConfig(t, Files(good, "node1")), cli)
		var host x509.HostnameError
		if !errors.As(cliErr, &host) {
			t.Fatalf("client: err = %v, want x509.HostnameError", cliErr)
		}
	})
}

func TestPlaintextClientRefused(t *testing.T) {
	dir := genCluster(t, "prod")
	srv := serverConfig(t, Files(dir, "node1"))
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		srvErr <- c.(*tls.Conn).Handshake()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("GET /cluster HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if err := <-srvErr; err == nil {
		t.Fatal("server accepted a plaintext client")
	}
	b, _ := io.ReadAll(c)
	if strings.Contains(string(b), "HTTP/1.1 200") {
		t.Errorf("plaintext client got an answer: %q", b)
	}
}

func TestLooseKeyModeRefused(t *testing.T) {
	dir := genCluster(t, "prod")
	f := Files(dir, "node1")
	caKey := filepath.Join(dir, "ca.key")
	for _, p := range []string{f.Key, caKey} {
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want := "pki: key file " + f.Key + " has mode 0644; want 0600 or stricter"
	if _, err := f.ServerConfig(); err == nil || err.Error() != want {
		t.Errorf("ServerConfig: err = %v\nwant %s", err, want)
	}
	if _, err := f.ClientConfig(); err == nil || err.Error() != want {
		t.Errorf("ClientConfig: err = %v\nwant %s", err, want)
	}
	if _, err := LoadCA(filepath.Join(dir, "ca.crt"), caKey); err == nil || !strings.Contains(err.Error(), "has mode 0644") {
		t.Errorf("LoadCA: err = %v", err)
	}
	// Stricter than 0600 is fine.
	if err := os.Chmod(f.Key, 0o400); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ServerConfig(); err != nil {
		t.Errorf("key mode 0400: %v", err)
	}
}

func TestExpiredCertRefused(t *testing.T) {
	dir := genCluster(t, "prod")
	ca, err := LoadCA(filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	certPEM, keyPEM, err := ca.issue("node2", []string{"127.0.0.1"}, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteFiles(dir, ca, []NodeCert{{Name: "old", CertPEM: certPEM, KeyPEM: keyPEM}}); err != nil {
		t.Fatal(err)
	}

	// Loading refuses it, naming the file...
	if _, err := Files(dir, "old").ClientConfig(); err == nil || !strings.Contains(err.Error(), "old.crt") || !strings.Contains(err.Error(), "expired") {
		t.Errorf("ClientConfig with an expired certificate: err = %v", err)
	}
	// ...and a peer presenting it anyway is refused at the handshake, as
	// client and as server.
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	cli := clientConfig(t, Files(dir, "node2"))
	cli.Certificates = []tls.Certificate{pair}
	if _, _, srvErr, _ := handshake(t, serverConfig(t, Files(dir, "node1")), cli); srvErr == nil || !strings.Contains(srvErr.Error(), "expired") {
		t.Errorf("server accepted an expired client certificate: %v", srvErr)
	}
	srv := serverConfig(t, Files(dir, "node1"))
	srv.Certificates = []tls.Certificate{pair}
	if _, _, _, cliErr := handshake(t, srv, clientConfig(t, Files(dir, "node2"))); cliErr == nil || !strings.Contains(cliErr.Error(), "expired") {
		t.Errorf("client accepted an expired server certificate: %v", cliErr)
	}
}
