package postgres

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRecordEnd(t *testing.T) {
	const seg = 16 << 20
	for _, c := range []struct {
		lsn  LSN
		size uint64
		want LSN
	}{
		{0x1526058, 405, 0x15261F0}, // within a page (seen from pg_waldump)
		{0x1526058, 8, 0x1526060},
		{3*8192 - 16, 100, 3*8192 + 24 + 88},               // continues on the next page after its header
		{seg - 16, 100, seg + 40 + 88},                     // ...and on the next segment's long header
		{3*8192 - 16, 16 + 8192 - 24 + 8, 4*8192 + 24 + 8}, // over a whole page
	} {
		if got := recordEnd(c.lsn, c.size, seg); got != c.want {
			t.Errorf("recordEnd(%s, %d) = %s, want %s", c.lsn, c.size, got, c.want)
		}
	}
}

func TestWALSegments(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"000000010000000000000003", "000000010000000100000000", "000000020000000000000004", "000000020000000000000004.partial", "00000002.history", "archive_status"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	segs, err := walSegments(dir, 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	want := []walSegment{
		{"000000020000000000000004", 2, 4},
		{"000000010000000100000000", 1, 256},
		{"000000010000000000000003", 1, 3},
	}
	if len(segs) != len(want) {
		t.Fatalf("segments %+v, want %+v", segs, want)
	}
	for i := range want {
		if segs[i] != want[i] {
			t.Errorf("segment %d: %+v, want %+v", i, segs[i], want[i])
		}
	}
}

func TestWALRecordLine(t *testing.T) {
	for _, c := range []struct {
		line, rmgr, tot, lsn, desc string
	}{
		{"rmgr: Transaction len (rec/tot):    405/   405, tx:        724, lsn: 0/01526058, prev 0/01526018, desc: COMMIT 2026-12-05 09:17:25.917816 UTC", "Transaction", "405", "0/01526058", "COMMIT"},
		{"rmgr: XLOG        len (rec/tot):     24/    24, tx:          0, lsn: 0/02000148, prev 0/02000110, desc: SWITCH ", "XLOG", "24", "0/02000148", "SWITCH"},
		{"rmgr: Heap2       len (rec/tot):     60/  8240, tx:          0, lsn: 0/0154A0B0, prev 0/0154A070, desc: VISIBLE cutoff xid 0 flags 0x01, blkref #0: rel 1663/5/2608 fork vm blk 0 FPW", "Heap2", "8240", "0/0154A0B0", "VISIBLE"},
	} {
		m := walRecordLine.FindStringSubmatch(c.line)
		if m == nil || m[1] != c.rmgr || m[2] != c.tot || m[3] != c.lsn || m[4] != c.desc {
			t.Errorf("%q: %q", c.line, m)
		}
	}
	if walRecordLine.MatchString("pg_waldump: error: error in WAL record at 0/1526058: invalid record length at 0/15261F0: wanted 24, got 0") {
		t.Error("an error line matched")
	}
}
