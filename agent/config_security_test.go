package agent

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/pgha/pgha/pki"
)

// tlsConfig is validConfig with a tls section, https URLs and certificates
// for the three members from a fresh cluster CA; it returns the certs dir.
func tlsConfig(t *testing.T) (string, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "certs")
	err := pki.GenerateCluster(dir, "main", map[string][]string{
		"node1": {"10.0.0.11"}, "node2": {"10.0.0.12"}, "node3": {"10.0.0.13"},
	})
	if err != nil {
		t.Fatal(err)
	}
	f := pki.Files(dir, "node1")
	raw := strings.ReplaceAll(validConfig(t), "http://", "https://") +
		"tls: {ca: " + f.CA + ", cert: " + f.Cert + ", key: " + f.Key + "}\n"
	return raw, dir
}

func TestTLSConfigLoads(t *testing.T) {
	raw, _ := tlsConfig(t)
	cfg, err := ParseConfig([]byte(raw))
	if err != nil {
		t.Fatalf("valid TLS config refused: %v", err)
	}
	if cfg.TLS.server == nil || cfg.TLS.client == nil {
		t.Fatal("TLS configs not loaded")
	}
	if cfg.TLS.server.ClientAuth != tls.RequireAndVerifyClientCert {
		t.Errorf("raft's server config ClientAuth = %v, want RequireAndVerifyClientCert", cfg.TLS.server.ClientAuth)
	}
	if got := cfg.Cluster.Join[0]; !strings.HasPrefix(got, "https://") {
		t.Errorf("default join %q, want https", got)
	}
}

func TestTLSConfigErrorsNameTheKey(t *testing.T) {
	cases := []struct {
		name string
		edit func(t *testing.T, raw, certs string) string
		want []string
	}{
		{"http member with tls", func(_ *testing.T, raw, _ string) string {
			return strings.Replace(raw, "https://10.0.0.12", "http://10.0.0.12", 1)
		}, []string{"cluster.members[1].api", "must be https://"}},
		{"https without tls", func(_ *testing.T, raw, _ string) string {
			return raw[:strings.Index(raw, "tls: {")]
		}, []string{"api.advertise", "no tls section"}},
		{"http join with tls", func(_ *testing.T, raw, _ string) string {
			return strings.Replace(raw, "cluster:\n", "cluster:\n  join: [\"http://10.0.0.12:8008\"]\n", 1)
		}, []string{"cluster.join[0]"}},
		{"key missing", func(_ *testing.T, raw, _ string) string {
			i := strings.Index(raw, ", key: ")
			return raw[:i] + "}\n"
		}, []string{"tls.key", "missing"}},
		{"another node's certificate", func(_ *testing.T, raw, certs string) string {
			return strings.NewReplacer("node1.crt", "node2.crt", "node1.key", "node2.key").Replace(raw)
		}, []string{"tls.cert", `"node2"`}},
		{"certificate without the advertised address", func(t *testing.T, raw, certs string) string {
			err := pki.GenerateClusterWith(certs, "main", map[string][]string{"node1": {"10.0.0.99"}}, pki.GenerateOptions{ReuseCA: true})
			if err != nil {
				t.Fatal(err)
			}
			return raw
		}, []string{"tls.cert", "10.0.0.11", "pgha-agent certs"}},
		{"key readable by others", func(t *testing.T, raw, certs string) string {
			if err := os.Chmod(pki.Files(certs, "node1").Key, 0o644); err != nil {
				t.Fatal(err)
			}
			return raw
		}, []string{"tls.key", "chmod 600"}},
		{"certificate of another CA", func(t *testing.T, raw, certs string) string {
			other := filepath.Join(t.TempDir(), "other")
			if err := pki.GenerateCluster(other, "main", map[string][]string{"node1": {"10.0.0.11"}}); err != nil {
				t.Fatal(err)
			}
			return strings.Replace(raw, pki.Files(certs, "node1").Cert, pki.Files(other, "node1").Cert, 1)
		}, []string{"tls:"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw, certs := tlsConfig(t)
			_, err := ParseConfig([]byte(c.edit(t, raw, certs)))
			if err == nil {
				t.Fatal("config accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

func TestAPIToken(t *testing.T) {
	const token = "0123456789abcdef0123456789abcdef"
	write := func(t *testing.T, content string, mode os.FileMode) string {
		p := filepath.Join(t.TempDir(), "token")
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	t.Run("from a file", func(t *testing.T) {
		p := write(t, token+"\n", 0o600)
		cfg, err := ParseConfig([]byte(validConfig(t) + "api: {auth_token_file: " + p + "}\n"))
		if err != nil {
			t.Fatal(err)
		}
		if cfg.API.Token() != token {
			t.Fatal("token not read")
		}
	})
	t.Run("from the environment", func(t *testing.T) {
		t.Setenv("PGHA_TEST_TOKEN", token)
		cfg, err := ParseConfig([]byte(validConfig(t) + "api: {auth_token_env: PGHA_TEST_TOKEN}\n"))
		if err != nil || cfg.API.Token() != token {
			t.Fatalf("token from env: %v", err)
		}
	})
	for _, c := range []struct {
		name, api string
		env       string
		want      []string
	}{
		{"readable by others", "auth_token_file: " + write(t, token, 0o640), "", []string{"api.auth_token_file", "chmod 600"}},
		{"too short", "auth_token_file: " + write(t, "secret", 0o600), "", []string{"api.auth_token_file", "at least 16"}},
		{"empty file", "auth_token_file: " + write(t, "\n", 0o600), "", []string{"api.auth_token_file", "empty"}},
		{"both", "auth_token_file: /x, auth_token_env: Y", "", []string{"api.auth_token_file", "not both"}},
		{"empty env", "auth_token_env: PGHA_TEST_TOKEN", "", []string{"api.auth_token_env", "PGHA_TEST_TOKEN"}},
		{"white space", "auth_token_env: PGHA_TEST_TOKEN", token + " x", []string{"api.auth_token_env", "white space"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("PGHA_TEST_TOKEN", c.env)
			_, err := ParseConfig([]byte(validConfig(t) + "api: {" + c.api + "}\n"))
			if err == nil {
				t.Fatal("config accepted")
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
			if strings.Contains(err.Error(), token) {
				t.Errorf("the error shows the token: %v", err)
			}
		})
	}
}
