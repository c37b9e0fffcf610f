package router_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/pgha/pgha/router"
)

// newTestCA makes a throwaway certificate authority and a server
// certificate it signed for localhost and 127.0.0.1. It writes the CA
// certificate to a file (psql's sslrootcert) and returns its path.
func newTestCA(t *testing.T) (caFile string, server tls.Certificate) {
	t.Helper()
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pgha router test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	// The test process runs psql itself, so its own temp dir is readable
	// by psql.
	caFile = filepath.Join(t.TempDir(), "root.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// psql runs psql with conninfo and one -c per command; it returns the
// combined output.
func psql(t *testing.T, conninfo, password string, commands ...string) (string, error) {
	t.Helper()
	args := []string{"-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", conninfo}
	for _, c := range commands {
		args = append(args, "-c", c)
	}
	cmd := exec.Command("/usr/bin/psql", args...)
	// No ~/.postgresql of whoever runs the test: only what conninfo says.
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=10", "HOME="+t.TempDir(), "PGPASSWORD="+password)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func testTLS(t *testing.T, cl *cluster) {
	ctx := testContext(t)
	caFile, cert := newTestCA(t)
	otherCA, _ := newTestCA(t)
	cfg := routerConfig(router.PoolTransaction)
	cfg.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	cfg.HBA = []router.HBARule{
		{Type: router.HBAHostSSL, Users: []string{scramUser}, Method: router.AuthSCRAM},   // TLS required
		{Type: router.HBAHostNoSSL, Users: []string{trustUser}, Method: router.AuthTrust}, // clear text only
		{Users: []string{md5User}, Method: router.AuthMD5},                                // either
	}
	tr := startRouter(t, cl, cfg)
	host, port, _ := net.SplitHostPort(tr.rw)
	conninfo := func(user, extra string) string {
		return fmt.Sprintf("host=%s port=%s user=%s dbname=postgres %s", host, port, user, extra)
	}

	t.Run("PsqlRequire", func(t *testing.T) {
		// SCRAM end to end over TLS, and psql says the connection is TLS.
		out, err := psql(t, conninfo(scramUser, "sslmode=require"), scramPass, "SELECT 40 + 2", `\conninfo`)
		if err != nil || !strings.HasPrefix(out, "42\n") || !strings.Contains(out, "SSL connection (protocol: TLS") {
			t.Fatalf("psql sslmode=require: %v\n%s", err, out)
		}
		out, err = psql(t, conninfo(scramUser, "sslmode=require"), "wrong", "SELECT 1")
		if err == nil || !strings.Contains(out, fmt.Sprintf(`password authentication failed for user "%s"`, scramUser)) {
			t.Fatalf("psql over TLS with a wrong password: %v\n%s", err, out)
		}
	})
	t.Run("PsqlVerifyFull", func(t *testing.T) {
		// host=localhost is what libpq checks the certificate against;
		// hostaddr is where it connects (the router listens on IPv4).
		info := fmt.Sprintf("host=localhost hostaddr=127.0.0.1 port=%s user=%s dbname=postgres sslmode=verify-full sslrootcert=%s", port, scramUser, caFile)
		out, err := psql(t, info, scramPass, "SELECT inet_server_port() IS NOT NULL", `\conninfo`)
		if err != nil || !strings.HasPrefix(out, "t\n") || !strings.Contains(out, "SSL connection") {
			t.Fatalf("psql sslmode=verify-full: %v\n%s", err, out)
		}
		// The same with a root certificate that did not sign the router's:
		// verification is real.
		info = strings.Replace(info, caFile, otherCA, 1)
		out, err = psql(t, info, scramPass, "SELECT 1")
		if err == nil || !strings.Contains(out, "certificate verify failed") {
			t.Fatalf("psql verify-full against another CA: %v\n%s", err, out)
		}
	})
	t.Run("HostSSLRefusesClearText", func(t *testing.T) {
		_, err := pgx.Connect(ctx, connString(tr.rw, scramUser, scramPass)) // sslmode=disable
		want := fmt.Sprintf(`no pg_hba.conf entry for host "127.0.0.1", user "%s", database "postgres", no encryption`, scramUser)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" || pgErr.Message != want {
			t.Fatalf("clear-text client on a hostssl rule: want 28000 %q, got %v", want, err)
		}
		// hostnossl: the other way round, in PostgreSQL's words too.
		_, err = pgx.Connect(ctx, conninfo(trustUser, "sslmode=require"))
		want = fmt.Sprintf(`no pg_hba.conf entry for host "127.0.0.1", user "%s", database "postgres", SSL encryption`, trustUser)
		if !errors.As(err, &pgErr) || pgErr.Code != "28000" || pgErr.Message != want {
			t.Fatalf("TLS client on a hostnossl rule: want 28000 %q, got %v", want, err)
		}
	})
	t.Run("PgxVerifyFull", func(t *testing.T) {
		c, err := pgx.Connect(ctx, fmt.Sprintf("host=localhost port=%s user=%s password=%s dbname=postgres sslmode=verify-full sslrootcert=%s", port, md5User, md5Pass, caFile))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(ctx)
		if _, ok := c.PgConn().Conn().(*tls.Conn); !ok {
			t.Fatalf("pgx connection is %T, want *tls.Conn", c.PgConn().Conn())
		}
		var n int
		if err := c.QueryRow(ctx, "SELECT 6 * 7").Scan(&n); err != nil || n != 42 {
			t.Fatalf("query over TLS: %d %v", n, err)
		}
	})
	t.Run("GSSEncRefused", func(t *testing.T) {
		conn := dialRaw(t, tr.rw)
		if b := negotiate(t, conn, 80877104); b != 'N' {
			t.Fatalf("GSSENCRequest answered %q, want 'N'", b)
		}
		// The client continues in clear text, as libpq does.
		fe := pgproto3.NewFrontend(conn, conn)
		fe.Send(&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": trustUser, "database": "postgres"}})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		readUntilReady(t, fe)
	})
	t.Run("ClearTextAfterSSLRequest", func(t *testing.T) {
		// A StartupMessage sent behind the SSLRequest, before the
		// handshake, must not be taken as if it came over TLS.
		accepted := tr.Snapshot().ClientsAccepted
		conn := dialRaw(t, tr.rw)
		ssl := binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), 80877103)
		startup, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber, Parameters: map[string]string{"user": md5User, "database": "postgres"}}).Encode(nil)
		if _, err := conn.Write(append(ssl, startup...)); err != nil {
			t.Fatal(err)
		}
		rest, _ := io.ReadAll(conn) // the router closes it
		if len(rest) == 0 || rest[0] != 'S' {
			t.Fatalf("answer %q, want 'S'", rest)
		}
		if len(rest) > 1 && rest[1] == 'R' {
			t.Fatalf("the router answered the clear-text startup: %q", rest)
		}
		if got := tr.Snapshot().ClientsAccepted; got != accepted {
			t.Fatalf("clients accepted %d -> %d", accepted, got)
		}
	})
	t.Run("NoTLSAnswersN", func(t *testing.T) {
		plain := startRouter(t, cl, routerConfig(router.PoolTransaction))
		for _, code := range []uint32{80877103, 80877104} {
			if b := negotiate(t, dialRaw(t, plain.rw), code); b != 'N' {
				t.Errorf("request %d answered %q without TLS, want 'N'", code, b)
			}
		}
	})
}

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	return conn
}

// negotiate sends an SSLRequest or GSSENCRequest (by code) and returns
// the one-byte answer.
func negotiate(t *testing.T, conn net.Conn, code uint32) byte {
	t.Helper()
	if _, err := conn.Write(binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, 8), code)); err != nil {
		t.Fatal(err)
	}
	var b [1]byte
	if _, err := io.ReadFull(conn, b[:]); err != nil {
		t.Fatal(err)
	}
	return b[0]
}
