package postgres

import (
	"encoding/json"
	"testing"
)

func TestLSNRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		text string
		val  LSN
	}{
		{"0/0", 0},
		{"0/3000060", 0x3000060},
		{"1/0", 1 << 32},
		{"16/B374D848", 0x16B374D848},
		{"FFFFFFFF/FFFFFFFF", ^LSN(0)},
	} {
		got, err := ParseLSN(tc.text)
		if err != nil {
			t.Fatalf("ParseLSN(%q): %v", tc.text, err)
		}
		if got != tc.val {
			t.Errorf("ParseLSN(%q) = %d, want %d", tc.text, got, tc.val)
		}
		if s := tc.val.String(); s != tc.text {
			t.Errorf("LSN(%d).String() = %q, want %q", tc.val, s, tc.text)
		}
	}
	if l, _ := ParseLSN("0/3000060"); l.String() != "0/3000060" {
		t.Errorf("round trip: %s", l)
	}
	if a, b := LSN(0x3000060), LSN(0x1_00000000); !(a < b) {
		t.Error("LSN order must be numeric")
	}
}

func TestParseLSNErrors(t *testing.T) {
	for _, s := range []string{"", "0", "/1", "1/", "x/1", "1/x", "123456789/0", "0/-1", "1/2/3"} {
		if _, err := ParseLSN(s); err == nil {
			t.Errorf("ParseLSN(%q) succeeded, want an error", s)
		}
	}
}

func TestLSNJSON(t *testing.T) {
	in := Slot{Name: "pgha_b", RestartLSN: 0x3000060}
	b, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"name":"pgha_b","active":false,"restart_lsn":"0/3000060"}`; string(b) != want {
		t.Errorf("json = %s, want %s", b, want)
	}
	var out Slot
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if out != in {
		t.Errorf("round trip = %+v, want %+v", out, in)
	}
}
