package agent

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzParseConfig: any bytes give a config or an error naming what is
// wrong, never a panic; an accepted config passes validation again.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte("name: node1\n"))
	f.Add([]byte("router:\n  hba: [\"hostssl all all 0.0.0.0/0 md5\"]\nvip: {address: 10.0.0.10/24}\n"))
	f.Add([]byte("cluster: {members: [{name: a, raft: \"x:1\", api: \"http://x:2\"}]}\ntiming: {loop_interval: -5s}\n"))
	f.Add([]byte("{{{{"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		cfg, err := ParseConfig(raw)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("accepted config fails validation: %v", err)
		}
	})
}

// FuzzDecodeControl: a control call's body is JSON with known fields or a
// 400 with a reason; nothing else.
func FuzzDecodeControl(f *testing.F) {
	f.Add([]byte(`{"candidate": "node2"}`))
	f.Add([]byte(`{"leader": "node1", "candidate": "node2", "member": "node3"}`))
	f.Add([]byte(`{"candidate": 7}`))
	f.Add([]byte(`[]`))
	f.Add([]byte{0xff, 0xfe})
	f.Fuzz(func(t *testing.T, body []byte) {
		w := httptest.NewRecorder()
		_, ok := decodeControl(w, body)
		switch {
		case ok && w.Code != http.StatusOK:
			t.Fatalf("accepted, but wrote status %d", w.Code)
		case !ok && (w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), "body must be JSON")):
			t.Fatalf("refused without a 400 and a reason: %d %s", w.Code, w.Body.String())
		}
	})
}
