package itest

import (
	"io"
	"os"
	"strings"
	"testing"

	"github.com/pgha/pgha/internal/localcluster"
)

// AssertNoSecretsLeaked fails t if any of the cluster's passwords or its
// API token appears in an agent's log, a PostgreSQL log, a node's config
// or any member's /cluster answer. It names where and which secret, never
// the secret itself.
func AssertNoSecretsLeaked(t testing.TB, lc *localcluster.Cluster) {
	t.Helper()
	secrets := lc.Secrets()
	for name, v := range secrets {
		if len(v) < 8 {
			t.Fatalf("secret %s is not known (%d characters): the check would prove nothing", name, len(v))
		}
	}
	places := map[string]string{}
	for _, n := range lc.Nodes() {
		for _, f := range []string{n.Log, n.PGData + ".log", n.Config} {
			if b, err := os.ReadFile(f); err == nil {
				places[f] = string(b)
			}
		}
		if !n.Running() {
			continue
		}
		resp, err := lc.ViewClient().Get(n.APIURL + "/cluster")
		if err != nil {
			t.Errorf("GET %s/cluster: %v", n.APIURL, err)
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		places[n.APIURL+"/cluster"] = string(b)
	}
	if len(places) == 0 {
		t.Fatal("nothing to check: no logs and no agent answered")
	}
	for where, text := range places {
		for name, v := range secrets {
			if strings.Contains(text, v) {
				t.Errorf("the %s secret appears in %s", name, where)
			}
		}
	}
}
