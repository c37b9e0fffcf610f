package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// TLSFiles names one node's TLS material: the cluster CA certificate, and
// the node's certificate and private key (see Files for the usual names).
type TLSFiles struct {
	CA, Cert, Key string
}

// ServerConfig returns the TLS configuration of a node's listeners: it
// presents the node certificate and requires every client to present a
// certificate signed by the cluster CA (mutual TLS), TLS 1.3 only.
//
// The files are read once, now: replacing them takes effect on restart.
func (f TLSFiles) ServerConfig() (*tls.Config, error) {
	cert, pool, err := f.load(x509.ExtKeyUsageServerAuth)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// ClientConfig returns the TLS configuration for dialing other nodes: it
// presents the node certificate and verifies the server's certificate
// against the cluster CA, and its SANs against the address dialed (crypto/tls
// takes ServerName from the dial address when it is empty), TLS 1.3 only.
func (f TLSFiles) ClientConfig() (*tls.Config, error) {
	cert, pool, err := f.load(x509.ExtKeyUsageClientAuth)
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		MinVersion:   tls.VersionTLS13,
	}, nil
}

// load reads the files and checks, now rather than at the first handshake,
// that the key is private, that the certificate is signed by the CA, is
// valid today and allows usage: a mix-up of files then fails at startup
// with a message naming them.
func (f TLSFiles) load(usage x509.ExtKeyUsage) (tls.Certificate, *x509.CertPool, error) {
	if f.CA == "" || f.Cert == "" || f.Key == "" {
		return tls.Certificate{}, nil, fmt.Errorf("pki: TLS files: CA %q, Cert %q and Key %q are all required", f.CA, f.Cert, f.Key)
	}
	if err := checkKeyMode(f.Key); err != nil {
		return tls.Certificate{}, nil, err
	}
	cert, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("pki: load %s and %s: %w", f.Cert, f.Key, err)
	}
	caPEM, err := os.ReadFile(f.CA)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("pki: load CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return tls.Certificate{}, nil, fmt.Errorf("pki: %s holds no PEM certificate", f.CA)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, nil, fmt.Errorf("pki: parse %s: %w", f.Cert, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("pki: %s does not verify against %s: %w", f.Cert, f.CA, err)
	}
	return cert, pool, nil
}

// PeerName returns the node name of the peer of a TLS connection whose
// handshake has completed: the CommonName of its certificate, once verified
// against the cluster CA. It returns "" if the peer presented no verified
// certificate, so an empty name never authorises anything.
func PeerName(state tls.ConnectionState) string {
	if len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return ""
	}
	return state.VerifiedChains[0][0].Subject.CommonName
}
