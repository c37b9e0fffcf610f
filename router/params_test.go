package router

import "testing"

func TestClientParams(t *testing.T) {
	sp, err := clientParams(map[string]string{
		"user": "u", "database": "d", "_pq_.x": "1",
		"application_name": "app", "TimeZone": "UTC",
		"options": `-c search_path=a,b --statement-timeout=5s -cwork_mem=4MB -c x.y=with\ space`,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"application_name": "app", "timezone": "UTC", "search_path": "a,b",
		"statement_timeout": "5s", "work_mem": "4MB", "x.y": "with space"}
	if len(sp.names) != len(want) {
		t.Fatalf("names %v, want %v", sp.names, want)
	}
	for i, n := range sp.names {
		if want[n] != sp.values[i] {
			t.Errorf("%s = %q, want %q", n, sp.values[i], want[n])
		}
	}
	if v, ok := sp.reported("TimeZone"); !ok || v != "UTC" {
		t.Errorf("reported(TimeZone) = %q, %v", v, ok)
	}
	if _, ok := sp.reported("DateStyle"); ok {
		t.Error("reported(DateStyle): the client did not send it")
	}
	// Same set, other spelling and order: same key.
	sp2, _ := clientParams(map[string]string{"timezone": "UTC", "application_name": "app",
		"options": `-c work_mem=4MB -c x.y=with\ space --search_path=a,b -c statement_timeout=5s`})
	if sp2.key != sp.key {
		t.Errorf("keys differ for the same settings: %q vs %q", sp.key, sp2.key)
	}
	if none, _ := clientParams(map[string]string{"user": "u"}); none.key != "" || none.applySQL() != "RESET ALL" {
		t.Errorf("no parameters: key %q, SQL %q", none.key, none.applySQL())
	}
	for _, bad := range []string{"-d 5", "-c", "-c =x", "-c novalue", "plain"} {
		if _, err := clientParams(map[string]string{"options": bad}); err == nil {
			t.Errorf("options %q accepted", bad)
		}
	}
}

func TestApplySQLQuotes(t *testing.T) {
	sp, _ := clientParams(map[string]string{"application_name": `it's \ odd`})
	got := sp.applySQL()
	want := `RESET ALL; SELECT pg_catalog.set_config(E'application_name', E'it''s \\ odd', false)`
	if got != want {
		t.Errorf("applySQL = %s\nwant      %s", got, want)
	}
}

func TestSessionEffects(t *testing.T) {
	for sql, want := range map[string]effects{
		"SET search_path = x":                         effSettings,
		"select 1; reset all":                         effSettings,
		"DISCARD ALL":                                 effSettings | effDiscard,
		"deallocate prepare all":                      effDiscard,
		"SELECT pg_catalog.set_config('a','b',false)": effSettings,
		"SELECT 1":                                    0,
		"UPDATE t SET a = 1":                          0,
		"SELECT 'set x'":                              0,
		"-- set\nSELECT 1":                            0,
		"INSERT INTO settings VALUES (1)":             0,
		"LISTEN ch":                                   effListen,
		"SELECT 1; listen ch":                         effListen,
		"select 'listen'":                             0,
		"CREATE TEMP TABLE t (x int)":                 effLeftovers,
		"create local temporary table t (x int)":      effLeftovers,
		"CREATE TABLE temp (x int)":                   0,
		"PREPARE p AS SELECT 1":                       effLeftovers,
		"DECLARE c CURSOR WITH HOLD FOR SELECT 1":     effLeftovers,
		"DECLARE c CURSOR FOR SELECT 1":               0,
		"SELECT pg_advisory_lock(1)":                  effLeftovers,
		"SELECT pg_advisory_xact_lock(1)":             0,
		"LOAD 'auto_explain'":                         effLeftovers,
		"CREATE TEMP TABLE t (x int); SET a = 1":      effLeftovers | effSettings,
	} {
		if got := sessionEffects(sql); got != want {
			t.Errorf("sessionEffects(%q) = %b, want %b", sql, got, want)
		}
	}
}
