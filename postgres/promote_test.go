package postgres

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestParseSyncStandbyNames(t *testing.T) {
	cases := []struct {
		in    string
		num   int
		names []string
		bad   bool
	}{
		{in: ""},
		{in: `ANY 1 ("n2","n3")`, num: 1, names: []string{"n2", "n3"}},
		{in: `FIRST 2 (a, "b c")`, num: 2, names: []string{"a", "b c"}},
		{in: `1 (a)`, num: 1, names: []string{"a"}},
		{in: `a, b`, num: 1, names: []string{"a", "b"}},
		{in: `*`, num: 1, names: []string{"*"}},
		{in: `any 1 ("x""y")`, num: 1, names: []string{`x"y`}},
		{in: `ANY 0 (a)`, bad: true},
		{in: `ANY 1 (a`, bad: true},
		{in: `ANY 1 (a,,b)`, bad: true},
		{in: `ANY x (a)`, bad: true},
	}
	for _, c := range cases {
		got, err := ParseSyncStandbyNames(c.in)
		if c.bad {
			if err == nil {
				t.Errorf("%q: want an error, got %+v", c.in, got)
			}
			continue
		}
		if err != nil || got.Num != c.num || !slices.Equal(got.Names, c.names) {
			t.Errorf("%q: got %+v, %v; want %d %v", c.in, got, err, c.num, c.names)
		}
	}
	// What pgha writes reads back as itself.
	w := SyncStandbyNames(1, []string{"node1", "node3"})
	if got, err := ParseSyncStandbyNames(w); err != nil || !slices.Equal(got.Names, []string{"node1", "node3"}) {
		t.Errorf("round trip of %q: %+v, %v", w, got, err)
	}
}

func TestSetSyncStandbyNamesKeepsTheRest(t *testing.T) {
	dir := t.TempDir()
	i := &Instance{cfg: Config{DataDir: dir}}
	conf := renderPghaConf([]setting{{"primary_conninfo", "host=a port=1"}, {"synchronous_standby_names", ""}, {"work_mem", "4MB"}})
	if err := os.WriteFile(filepath.Join(dir, PghaConfFile), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := i.SetSyncStandbyNames([]string{"n2", "n3"}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, PghaConfFile))
	got := parsePghaConf(string(b))
	if got["synchronous_standby_names"] != `ANY 1 ("n2","n3")` || got["primary_conninfo"] != "host=a port=1" || got["work_mem"] != "4MB" || len(got) != 3 {
		t.Fatalf("pgha.conf after: %q", b)
	}
}
