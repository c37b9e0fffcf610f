package consensus

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// tlsStreamLayer is a raft.StreamLayer speaking mutual TLS: it accepts only
// peers that present a certificate the server config verifies (the cluster
// CA), and dials only peers whose certificate the client config verifies.
// Without it anyone who can reach the raft port can vote, and a
// RequestVote with a high term and LeadershipTransfer set deposes the
// leader.
//
// Accept and Dial are called by raft's NetworkTransport: Accept from its
// one listening goroutine, Dial from any goroutine.
type tlsStreamLayer struct {
	ln        net.Listener
	advertise net.Addr
	server    *tls.Config
	client    *tls.Config
	log       *slog.Logger
}

var _ raft.StreamLayer = (*tlsStreamLayer)(nil)

// newTLSStreamLayer listens on bind. Like raft's TCP transport, it refuses
// to advertise an unspecified address (0.0.0.0), which peers cannot dial.
func newTLSStreamLayer(bind string, advertise net.Addr, server, client *tls.Config, log *slog.Logger) (*tlsStreamLayer, error) {
	ln, err := net.Listen("tcp", bind)
	if err != nil {
		return nil, err
	}
	s := &tlsStreamLayer{ln: ln, advertise: advertise, server: server, client: client, log: log}
	if a, ok := s.Addr().(*net.TCPAddr); !ok || a.IP == nil || a.IP.IsUnspecified() {
		ln.Close()
		return nil, fmt.Errorf("local address %s is not advertisable; set AdvertiseAddr", s.Addr())
	}
	return s, nil
}

// Accept returns the next connection. Its TLS handshake happens on its
// first Read, on raft's per-connection goroutine, so that one slow or
// hostile client cannot hold up the accept loop (tls.NewListener would
// behave the same, without the deadline and the log line).
func (s *tlsStreamLayer) Accept() (net.Conn, error) {
	c, err := s.ln.Accept()
	if err != nil {
		return nil, err
	}
	return &serverConn{Conn: tls.Server(c, s.server), log: s.log}, nil
}

// Dial connects to a peer; timeout bounds the TCP connect and the TLS
// handshake together. crypto/tls takes the name to verify from address
// when the client config has no ServerName, so the peer's certificate must
// carry the host or IP that address names.
func (s *tlsStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(address), s.client)
	if err != nil {
		return nil, fmt.Errorf("raft TLS dial %s: %w", address, err)
	}
	return c, nil
}

func (s *tlsStreamLayer) Close() error { return s.ln.Close() }

func (s *tlsStreamLayer) Addr() net.Addr {
	if s.advertise != nil {
		return s.advertise
	}
	return s.ln.Addr()
}

// handshakeTimeout bounds a server-side handshake, so a peer that connects
// and says nothing does not hold a goroutine and a descriptor for ever.
const handshakeTimeout = transportTimeout

// serverConn is an accepted connection whose handshake runs on first Read.
// raft reads from it on one goroutine only.
type serverConn struct {
	*tls.Conn
	log  *slog.Logger
	once sync.Once
	err  error
}

func (c *serverConn) Read(b []byte) (int, error) {
	c.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
		defer cancel()
		if err := c.HandshakeContext(ctx); err != nil {
			// Logged here, once, with the peer's address; raft then sees
			// io.EOF, which it treats as a peer hanging up and does not log
			// again as a garbled command.
			c.log.Warn("raft connection refused: TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
			c.err = io.EOF
		}
	})
	if c.err != nil {
		return 0, c.err
	}
	return c.Conn.Read(b)
}

// validateTLS checks the TLS fields of a Config: both or neither, and a
// configuration that really authenticates both ends, since an unauthenticated
// raft peer can vote and depose the leader.
func validateTLS(server, client *tls.Config) error {
	switch {
	case server == nil && client == nil:
		return nil
	case server == nil || client == nil:
		return errors.New("consensus config: ServerTLS and ClientTLS must be set together (mutual TLS), or neither")
	case server.ClientAuth != tls.RequireAndVerifyClientCert:
		return fmt.Errorf("consensus config: ServerTLS.ClientAuth is %s; raft peers must be verified: use tls.RequireAndVerifyClientCert", server.ClientAuth)
	case len(server.Certificates) == 0 && server.GetCertificate == nil && server.GetConfigForClient == nil:
		return errors.New("consensus config: ServerTLS has no certificate")
	case len(client.Certificates) == 0 && client.GetClientCertificate == nil:
		return errors.New("consensus config: ClientTLS has no certificate; peers require one")
	case client.InsecureSkipVerify:
		return errors.New("consensus config: ClientTLS.InsecureSkipVerify is set; peers must be verified against the cluster CA")
	}
	return nil
}
