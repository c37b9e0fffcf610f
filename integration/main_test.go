// Package integration holds end-to-end tests: real pgha-agent processes
// (built from ./cmd/pgha-agent), each with its own real PostgreSQL, talking
// Raft over TCP on 127.0.0.1.
package integration

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/pgha/pgha/integration/itest"
)

// agentBinary is built once by TestMain.
var agentBinary string

func TestMain(m *testing.M) { itest.Main(m, &agentBinary) }

// httpStatus does one request and returns the status code.
func httpStatus(t *testing.T, method, url string) int {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func getJSON(t *testing.T, url string, into any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		t.Fatalf("decode %s: %v", url, err)
	}
}
