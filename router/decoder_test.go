package router

import (
	"crypto/md5"
	"encoding/binary"
	"encoding/hex"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestDecoderNotReusedInsideMessage: a client that leaves in the middle
// of its password message fails its login, and the recycled decoder that
// was reading it never reaches another session (it would take that
// session's bytes for the rest of the message). Each round, a client
// sends half a password message and hangs up, then another logs in with
// md5 and runs an admin command.
func TestDecoderNotReusedInsideMessage(t *testing.T) {
	topo := NewBackendSet(Backend{Name: "p", Host: "127.0.0.1", Port: 1, Primary: true, Healthy: true})
	r, err := New(Config{PoolMode: PoolTransaction, HBA: []HBARule{{Method: AuthMD5}},
		Users: map[string]string{"u": MD5Hash("u", "pw")}, ServerConnectTimeout: time.Second}, topo)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	r.pool("127.0.0.1:1", "postgres", "u").params = map[string]string{"server_version": "15.0"}
	ln := listen(t)
	go r.Serve(t.Context(), ln, ReadWrite)
	login := startupBytes(map[string]string{"user": "u", "database": "postgres"})
	dial := func() (net.Conn, *pgproto3.Frontend, [4]byte) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		c.Write(login)
		fe := pgproto3.NewFrontend(c, c)
		m, err := fe.Receive()
		req, ok := m.(*pgproto3.AuthenticationMD5Password)
		if err != nil || !ok {
			t.Fatalf("login: %T %v, want AuthenticationMD5Password", m, err)
		}
		return c, fe, req.Salt
	}
	for round := range 30 {
		c, _, _ := dial()
		half := binary.BigEndian.AppendUint32([]byte{'p'}, 40)
		c.Write(append(half, "md5"...)) // 3 of 40 body bytes
		c.(*net.TCPConn).CloseWrite()
		io.Copy(io.Discard, c) // the router gives up on it and closes
		c.Close()

		c, fe, salt := dial()
		inner := MD5Hash("u", "pw")[3:]
		sum := md5.Sum(append([]byte(inner), salt[:]...))
		fe.Send(&pgproto3.PasswordMessage{Password: "md5" + hex.EncodeToString(sum[:])})
		fe.Send(&pgproto3.Query{String: "SHOW POOL_NODES"})
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
		for ready := 0; ready < 2; {
			m, err := fe.Receive()
			if err != nil {
				t.Fatalf("round %d: the client after one that left inside its password message: %v", round, err)
			}
			switch m := m.(type) {
			case *pgproto3.ErrorResponse:
				t.Fatalf("round %d: the client after one that left inside its password message: %s %s", round, m.Code, m.Message)
			case *pgproto3.ReadyForQuery:
				ready++
			}
		}
		c.Close()
	}
}
