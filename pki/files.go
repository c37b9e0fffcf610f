package pki

import (
	"cmp"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// File names inside a certificate directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// File modes written by WriteFiles. Keys must stay private to the owner
// (loading refuses anything looser); certificates are public.
const (
	keyMode  fs.FileMode = 0o600
	certMode fs.FileMode = 0o644
)

// NodeCert is one node's certificate and key, PEM encoded, as Issue returns
// them.
type NodeCert struct {
	Name            string
	CertPEM, KeyPEM []byte
}

// Files returns the paths of node's TLS files in dir, as WriteFiles names
// them.
func Files(dir, node string) TLSFiles {
	return TLSFiles{
		CA:   filepath.Join(dir, CACertFile),
		Cert: filepath.Join(dir, node+".crt"),
		Key:  filepath.Join(dir, node+".key"),
	}
}

// WriteFiles writes each node's <name>.crt and <name>.key, then ca.crt and
// ca.key, into dir (created 0700 if missing), replacing files that exist.
// Keys get mode 0600 and certificates 0644 whatever the umask. Each file is
// written to a temporary name and renamed, so a reader never sees half a
// key. The CA comes last: if writing stops early, dir holds no new CA, and
// GenerateCluster may simply be run again.
func WriteFiles(dir string, ca *CA, nodes []NodeCert) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: write files: %w", err)
	}
	for _, n := range nodes {
		if err := ValidNodeName(n.Name); err != nil {
			return err
		}
		f := Files(dir, n.Name)
		if err := writeFile(f.Cert, n.CertPEM, certMode); err != nil {
			return err
		}
		if err := writeFile(f.Key, n.KeyPEM, keyMode); err != nil {
			return err
		}
	}
	if err := writeFile(filepath.Join(dir, CACertFile), ca.CertPEM(), certMode); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, CAKeyFile), ca.KeyPEM(), keyMode)
}

// GenerateOptions tunes GenerateClusterWith. The zero value is what
// GenerateCluster uses.
type GenerateOptions struct {
	// What to do when dir already holds a CA (ca.crt or ca.key). By default
	// GenerateCluster refuses: a new CA would silently make every node
	// certificate signed by the old one untrusted.
	//
	// ReuseCA issues the node certificates with the CA in dir (to add a
	// node or renew certificates); it needs ca.key. ReplaceCA creates a new
	// CA over the old one; every node then needs its new files.
	ReuseCA, ReplaceCA bool

	// Zero values select DefaultCAValidity and DefaultCertValidity.
	CAValidity, CertValidity time.Duration
}

// GenerateCluster creates a CA for cluster and a certificate for each node
// (name -> the IPs and DNS names peers dial it at), and writes them all to
// dir with WriteFiles. It refuses, with an error wrapping fs.ErrExist, if
// dir already holds a CA; see GenerateClusterWith for the alternatives.
func GenerateCluster(dir, cluster string, nodes map[string][]string) error {
	return GenerateClusterWith(dir, cluster, nodes, GenerateOptions{})
}

// GenerateClusterWith is GenerateCluster with options.
func GenerateClusterWith(dir, cluster string, nodes map[string][]string, opts GenerateOptions) error {
	if opts.ReuseCA && opts.ReplaceCA {
		return errors.New("pki: ReuseCA and ReplaceCA are exclusive")
	}
	if len(nodes) == 0 {
		return errors.New("pki: generate: no nodes")
	}
	caValidity := cmp.Or(opts.CAValidity, DefaultCAValidity)
	certValidity := cmp.Or(opts.CertValidity, DefaultCertValidity)

	caCert, caKey := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	exists := fileExists(caCert) || fileExists(caKey)
	var ca *CA
	var err error
	switch {
	case exists && opts.ReuseCA:
		if ca, err = LoadCA(caCert, caKey); err != nil {
			return err
		}
		if ca.ClusterName() != cluster {
			return fmt.Errorf("pki: the CA in %s belongs to cluster %q, not %q", dir, ca.ClusterName(), cluster)
		}
	case exists && !opts.ReplaceCA:
		return fmt.Errorf("pki: %s already holds a cluster CA; refusing to replace it, since every certificate it signed would stop being trusted (reuse it to add nodes, or replace it explicitly): %w", dir, fs.ErrExist)
	default:
		if ca, err = NewCA(cluster, caValidity); err != nil {
			return err
		}
	}

	// Issue everything before writing anything, so a bad node name or host
	// list leaves dir untouched.
	var certs []NodeCert
	for _, name := range slices.Sorted(maps.Keys(nodes)) {
		c, k, err := ca.Issue(name, nodes[name], certValidity)
		if err != nil {
			return err
		}
		certs = append(certs, NodeCert{Name: name, CertPEM: c, KeyPEM: k})
	}
	return WriteFiles(dir, ca, certs)
}

// checkKeyMode refuses a private key file that group or others may read or
// write, as ssh does: such a key may already be someone else's.
func checkKeyMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("pki: key file: %w", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("pki: key file %s has mode %04o; want 0600 or stricter", path, perm)
	}
	return nil
}

// writeFile atomically replaces path with data, with exactly mode.
func writeFile(path string, data []byte, mode fs.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("pki: write %s: %w", path, err)
		}
	}()
	// Chmod, not the create mode, so the umask cannot loosen or tighten it.
	if err := f.Chmod(mode); err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

func fileExists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil || !errors.Is(err, fs.ErrNotExist)
}
