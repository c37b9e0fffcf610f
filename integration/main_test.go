// Package integration holds end-to-end tests: real pgha-agent processes
// (built from ./cmd/pgha-agent), each with its own real PostgreSQL, talking
// Raft over TCP on 127.0.0.1.
package integration

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"testing"

	"github.com/pgha/pgha/integration/itest"
)

// agentBinary is built once by TestMain.
var agentBinary string

func TestMain(m *testing.M) {
	bin, cleanup, err := itest.BuildAgent()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBinary = bin
	code := m.Run()
	cleanup()
	os.Exit(code)
}

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
