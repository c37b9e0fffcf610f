package routeronly

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// Bad router.yaml files are refused with an error that names the key and
// says what to do; a good one loads with the defaults filled in.
func TestParseConfig(t *testing.T) {
	dir := t.TempDir()
	token := filepath.Join(dir, "api.token")
	if err := os.WriteFile(token, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, "loose.token")
	if err := os.WriteFile(loose, []byte("0123456789abcdef0123456789abcdef\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, yaml, wantErr string
	}{
		{"empty", "", "the file is empty"},
		{"no agents", "router: {port: 6432}\n", "agents: missing"},
		{"unknown key", "agents: [http://127.0.0.1:8008]\nagent: [x]\n", "field agent not found"},
		{"not a URL", "agents: [\"127.0.0.1:8008\"]\n", "agents[0]: \"127.0.0.1:8008\" is not an http:// or https:// URL"},
		{"https without CA", "agents: [https://10.0.0.11:8008]\n", "agents[0]: \"https://10.0.0.11:8008\" is https:// but tls.ca is not set"},
		{"path in URL", "agents: [http://10.0.0.11:8008/cluster]\n", "agents[0]: \"http://10.0.0.11:8008/cluster\" has a path"},
		{"cert without key", "agents: [https://10.0.0.11:8008]\ntls: {ca: /x/ca.crt, cert: /x/app.crt}\n", "tls.cert: give tls.cert and tls.key together"},
		{"same ports", "agents: [http://10.0.0.11:8008]\nrouter: {port: 9999, read_only_port: 9999}\n", "router.read_only_port: 9999 is also router.port"},
		{"bad listen", "agents: [http://10.0.0.11:8008]\nrouter: {listen: \"localhost:9999\"}\n", "router.listen: \"localhost:9999\" is not an IP address"},
		{"disabled", "agents: [http://10.0.0.11:8008]\nrouter: {enabled: false}\n", "router.enabled: false makes no sense"},
		{"bad hba", "agents: [http://10.0.0.11:8008]\nrouter: {hba: [\"host all all nowhere trust\"]}\n", "router.hba"},
		{"missing token file", "agents: [http://10.0.0.11:8008]\ntoken_file: " + filepath.Join(dir, "none") + "\n", "token_file"},
		{"readable token file", "agents: [http://10.0.0.11:8008]\ntoken_file: " + loose + "\n", "must not be readable by group or others"},
		{"bad duration", "agents: [http://10.0.0.11:8008]\nrouter: {primary_wait: soon}\n", "parse YAML"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}

	c, err := ParseConfig([]byte("agents: [http://10.0.0.11:8008, http://10.0.0.12:8008/]\ntoken_file: " + token + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Router.Listen != "127.0.0.1" || c.Router.Port != 9999 || c.Router.ReadOnlyPort != 9998 || c.Router.PoolMode != "transaction" {
		t.Fatalf("defaults: listen %q ports %d/%d pool_mode %q; want 127.0.0.1, 9999/9998, transaction", c.Router.Listen, c.Router.Port, c.Router.ReadOnlyPort, c.Router.PoolMode)
	}
	if c.Token() != "0123456789abcdef0123456789abcdef" {
		t.Fatalf("token %q not read from token_file", c.Token())
	}
}

// The guide's example decodes with known keys only and validates (its
// files live on the application host, so they are not loaded here).
func TestExampleConfigValidates(t *testing.T) {
	raw, err := os.ReadFile("../examples/three-vms/app1-router.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if err := c.validate(); err != nil {
		t.Fatal(err)
	}
	if len(c.Agents) != 3 || c.Router.Port != 9999 || c.Router.ReadOnlyPort != 9998 {
		t.Fatalf("agents %v ports %d/%d; want three agents on 9999/9998", c.Agents, c.Router.Port, c.Router.ReadOnlyPort)
	}
}
