package router

import (
	"bytes"
	"testing"

	"github.com/jackc/pgx/v5/pgproto3"
)

// TestCopyMsg: the copy encodes as the original did and shares nothing
// with the read buffer a Bind's parameters point into.
func TestCopyMsg(t *testing.T) {
	for _, m := range []pgproto3.FrontendMessage{
		&pgproto3.Parse{Name: "s", Query: "SELECT $1, $2", ParameterOIDs: []uint32{23, 25}},
		&pgproto3.Bind{DestinationPortal: "p", PreparedStatement: "s", ParameterFormatCodes: []int16{1},
			Parameters: [][]byte{[]byte("abc"), nil, {}, []byte("de")}, ResultFormatCodes: []int16{0, 1}},
		&pgproto3.Bind{},
		&pgproto3.Describe{ObjectType: 'S', Name: "s"},
		&pgproto3.Execute{Portal: "p", MaxRows: 7},
		&pgproto3.Close{ObjectType: 'P', Name: "p"},
	} {
		want, err := m.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		// Decode from a buffer as pgproto3.Backend does, copy, then
		// scribble over the buffer.
		buf := bytes.Clone(want)
		orig := m
		switch m.(type) {
		case *pgproto3.Bind:
			orig = &pgproto3.Bind{}
		case *pgproto3.Parse:
			orig = &pgproto3.Parse{}
		}
		if err := orig.Decode(buf[5:]); err != nil {
			t.Fatal(err)
		}
		cp, n := copyMsg(orig)
		if cp == nil {
			t.Fatalf("copyMsg(%T) = nil", m)
		}
		for i := range buf {
			buf[i] = 'x'
		}
		got, err := cp.Encode(nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%T: copy encodes as %q, want %q", m, got, want)
		}
		if n != len(want) {
			t.Errorf("%T: size %d, want %d", m, n, len(want))
		}
	}
	if cp, _ := copyMsg(&pgproto3.Query{String: "SELECT 1"}); cp != nil {
		t.Error("copyMsg(Query) copied: a Query is a flush point, never pending")
	}
}
