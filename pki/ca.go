// Package pki issues and loads the certificates that authenticate pgha
// agents to each other: one private CA per cluster, and one certificate per
// node that serves as both its TLS server and its TLS client certificate.
//
// Every connection between agents (Raft, the internal HTTP API) is mutual
// TLS against the cluster CA, so a host that does not hold a node key signed
// by that CA can neither vote, nor replicate, nor call the agents. The
// node's name is the certificate's CommonName (PeerName reads it back);
// host names and IPs that peers dial are its SANs and are verified as
// usual.
//
// Files in a certificate directory (GenerateCluster writes them):
//
//	ca.crt       the cluster CA certificate (0644), on every node
//	ca.key       the CA private key (0600); needed only to issue, keep it off the nodes
//	<node>.crt   the node certificate (0644)
//	<node>.key   the node private key (0600)
//
// Key files readable by group or others are refused when loaded, as ssh
// refuses loose private keys.
package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"time"
)

// Defaults used by GenerateCluster when GenerateOptions leaves them zero.
const (
	DefaultCAValidity   = 10 * 365 * 24 * time.Hour
	DefaultCertValidity = 5 * 365 * 24 * time.Hour
)

// clockSkew backdates NotBefore so that a certificate issued on one host is
// already valid on a peer whose clock is a little behind.
const clockSkew = 5 * time.Minute

// CA is a cluster certificate authority: its certificate and private key.
// A CA is immutable after NewCA or LoadCA and safe for concurrent use.
type CA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
	keyPEM  []byte
}

// NewCA creates a self-signed ECDSA P-256 CA for clusterName, valid for
// validity from now.
func NewCA(clusterName string, validity time.Duration) (*CA, error) {
	if clusterName == "" {
		return nil, errors.New("pki: new CA: cluster name is empty")
	}
	if validity <= 0 {
		return nil, fmt.Errorf("pki: new CA for %s: validity %s is not positive", clusterName, validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: new CA for %s: generate key: %w", clusterName, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "pgha " + clusterName + " CA", Organization: []string{clusterName}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// The CA signs node certificates directly, never another CA.
		MaxPathLen:     0,
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	certPEM, err := sign(tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("pki: new CA for %s: %w", clusterName, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: new CA for %s: %w", clusterName, err)
	}
	return newCA(certPEM, keyPEM)
}

// LoadCA reads a CA written by WriteFiles (or any PEM CA certificate and
// its PKCS#8 or SEC 1 EC key). The key file must not be readable by group
// or others.
func LoadCA(certPath, keyPath string) (*CA, error) {
	if err := checkKeyMode(keyPath); err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("pki: load CA: %w", err)
	}
	ca, err := newCA(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%w (files %s, %s)", err, certPath, keyPath)
	}
	return ca, nil
}

// newCA parses and cross-checks a CA certificate and key.
func newCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("pki: certificate %q is not a CA", cert.Subject.CommonName)
	}
	key, err := parseECKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("pki: CA key does not belong to certificate %q", cert.Subject.CommonName)
	}
	return &CA{cert: cert, key: key, certPEM: certPEM, keyPEM: keyPEM}, nil
}

// CertPEM returns the CA certificate, PEM encoded.
func (ca *CA) CertPEM() []byte { return ca.certPEM }

// KeyPEM returns the CA private key, PEM encoded. Write it with mode 0600.
func (ca *CA) KeyPEM() []byte { return ca.keyPEM }

// ClusterName is the cluster the CA was created for.
func (ca *CA) ClusterName() string {
	if o := ca.cert.Subject.Organization; len(o) > 0 {
		return o[0]
	}
	return ""
}

// NotAfter is when the CA, and so every certificate it issued, expires.
func (ca *CA) NotAfter() time.Time { return ca.cert.NotAfter }

// Issue creates a key and a certificate for node nodeName, valid for
// validity from now for both TLS server and TLS client authentication.
// hosts are the IP addresses and DNS names that peers dial to reach the
// node; at least one is required, since peers verify them.
func (ca *CA) Issue(nodeName string, hosts []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if validity <= 0 {
		return nil, nil, fmt.Errorf("pki: issue %s: validity %s is not positive", nodeName, validity)
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.cert.NotAfter) {
		return nil, nil, fmt.Errorf("pki: issue %s: validity until %s outlasts the CA, which expires %s",
			nodeName, notAfter.Format(time.DateOnly), ca.cert.NotAfter.Format(time.DateOnly))
	}
	return ca.issue(nodeName, hosts, now.Add(-clockSkew), notAfter)
}

// issue is Issue with explicit validity bounds (tests issue expired
// certificates with it).
func (ca *CA) issue(nodeName string, hosts []string, notBefore, notAfter time.Time) (certPEM, keyPEM []byte, err error) {
	if err := ValidNodeName(nodeName); err != nil {
		return nil, nil, err
	}
	if len(hosts) == 0 {
		return nil, nil, fmt.Errorf("pki: issue %s: no hosts; give the IPs or DNS names peers dial it at", nodeName)
	}
	tmpl := &x509.Certificate{
		// The CommonName is the node's identity (PeerName). Go never uses
		// it for host verification, which is done on the SANs below.
		Subject:     pkix.Name{CommonName: nodeName, Organization: ca.cert.Subject.Organization},
		NotBefore:   notBefore,
		NotAfter:    notAfter,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, h := range hosts {
		switch ip := net.ParseIP(h); {
		case h == "":
			return nil, nil, fmt.Errorf("pki: issue %s: empty host", nodeName)
		case ip != nil:
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		default:
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue %s: generate key: %w", nodeName, err)
	}
	if certPEM, err = sign(tmpl, ca.cert, key.Public(), ca.key); err != nil {
		return nil, nil, fmt.Errorf("pki: issue %s: %w", nodeName, err)
	}
	if keyPEM, err = encodeKey(key); err != nil {
		return nil, nil, fmt.Errorf("pki: issue %s: %w", nodeName, err)
	}
	return certPEM, keyPEM, nil
}

// ValidNodeName reports whether name can name a node certificate: it
// becomes a file name (<name>.crt), so only letters, digits, '.', '_' and
// '-' are allowed, it must not start with '.', and "ca" is taken.
func ValidNodeName(name string) error {
	if name == "" {
		return errors.New("pki: node name is empty")
	}
	if name == "ca" {
		return errors.New(`pki: node name "ca" is reserved for the CA files`)
	}
	if name[0] == '.' {
		return fmt.Errorf("pki: node name %q starts with '.'", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Errorf("pki: node name %q: %q is not allowed (letters, digits, '.', '_', '-')", name, r)
		}
	}
	return nil
}

// sign creates the certificate tmpl for pub, signed by parent's key, with
// a random 128-bit serial number.
func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	tmpl.SerialNumber = serial
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
	if err != nil {
		return nil, fmt.Errorf("create certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// parseCert parses the first certificate in PEM data.
func parseCert(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

func parseECKey(data []byte) (*ecdsa.PrivateKey, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM private key block")
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, err
			}
			ec, ok := k.(*ecdsa.PrivateKey)
			if !ok {
				return nil, fmt.Errorf("key is %T, want ECDSA", k)
			}
			return ec, nil
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(b.Bytes)
		}
	}
}
