// Package integration holds end-to-end tests: real pgha-agent processes
// (built from ./cmd/pgha-agent), each with its own real PostgreSQL, talking
// Raft over TCP on 127.0.0.1.
package integration

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pgha/pgha/internal/itest"
	"github.com/pgha/pgha/internal/wait"
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

// call does one request with client, sending token as a bearer token if it
// is not empty, and returns the status, the headers and the body.
func call(t *testing.T, client *http.Client, method, url, token, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

// authorised does an authorised call, again while the answer is 503: on
// this shared machine a Raft election can happen at any time, and an
// operator would retry too.
func authorised(t *testing.T, client *http.Client, method, url, token string) {
	t.Helper()
	wait.For(t, 30*time.Second, method+" "+url, func() (bool, string) {
		code, _, body := call(t, client, method, url, token, "")
		if code != http.StatusOK && code != http.StatusServiceUnavailable {
			t.Fatalf("%s %s: %d %s", method, url, code, body)
		}
		return code == http.StatusOK, body
	})
}
