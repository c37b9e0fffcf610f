package router

import "testing"

var classifyCases = []struct {
	sql  string
	want Class
}{
	{"SELECT 1", ClassRead},
	{"  select * from t where a = 'insert'", ClassRead},
	{"SELECT \"update\" FROM t", ClassRead},
	{"/* insert */ SELECT 1 -- delete\n", ClassRead},
	{"/* nested /* insert */ */ SELECT 1", ClassRead},
	{"WITH x AS (SELECT 1) SELECT * FROM x", ClassRead},
	{"VALUES (1), (2)", ClassRead},
	{"TABLE t", ClassRead},
	{"SHOW search_path", ClassRead},
	{"EXPLAIN SELECT 1", ClassRead},
	{"SELECT $$ for update $$, E'\\' insert'", ClassRead},
	{"SELECT $tag$ nextval( $tag$", ClassRead},
	{"SELECT 1; SELECT 2", ClassRead},
	{"SELECT substring('abc' FROM 1 FOR 2)", ClassRead},
	{"SELECT updated_at FROM t", ClassRead},
	{"SELECT abalance FROM pgbench_accounts WHERE aid = $1", ClassRead},
	{"INSERT INTO t VALUES (1)", ClassWrite},
	{"update t set a = 1", ClassWrite},
	{"DELETE FROM t", ClassWrite},
	{"SELECT * FROM t FOR UPDATE", ClassWrite},
	{"SELECT * FROM t FOR NO KEY UPDATE", ClassWrite},
	{"SELECT * FROM t FOR SHARE", ClassWrite},
	{"SELECT * FROM t FOR KEY SHARE", ClassWrite},
	{"SELECT * INTO new_t FROM t", ClassWrite},
	{"SELECT nextval('s')", ClassWrite},
	{"SELECT pg_catalog.setval('s', 1)", ClassWrite},
	{"SELECT pg_advisory_lock(1)", ClassWrite},
	{"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", ClassWrite},
	{"EXPLAIN ANALYZE INSERT INTO t VALUES (1)", ClassWrite},
	{"SELECT 1; INSERT INTO t VALUES (1)", ClassWrite},
	{"BEGIN", ClassWrite},
	{"SET search_path = x", ClassWrite},
	{"CREATE TABLE t (a int)", ClassWrite},
	{"COPY t TO STDOUT", ClassWrite},
	{"", ClassWrite},
	{"-- only a comment", ClassWrite},
	{"LOCK TABLE t", ClassWrite},
	{"SELECT 'unterminated", ClassRead},
}

func TestClassify(t *testing.T) {
	for _, tc := range classifyCases {
		if got := Classify(tc.sql, nil); got != tc.want {
			t.Errorf("Classify(%q) = %v, want %v", tc.sql, got, tc.want)
		}
	}
	custom := funcSet([]string{"my_writer"})
	if Classify("SELECT my_writer(1)", custom) != ClassWrite || Classify("SELECT nextval('s')", custom) != ClassRead {
		t.Error("a custom write-function list is not honoured")
	}
}

func TestIsDiscard(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want bool
	}{
		{"DISCARD ALL", true},
		{"discard all;", true},
		{"  /* reset */ Discard All", true},
		{"DEALLOCATE ALL", true},
		{"deallocate prepare all", true},
		{"SELECT 1; DISCARD ALL", true},
		{"DISCARD PLANS", false},
		{"DISCARD TEMP", false},
		{"DEALLOCATE my_stmt", false},
		{"SELECT * FROM discarded_items", false},
		{"SELECT * FROM discard", false},
		{"INSERT INTO log VALUES ('discard all')", false},
		{`SELECT "deallocate" FROM t`, false},
		{"", false},
	} {
		if got := sessionEffects(tc.sql)&effDiscard != 0; got != tc.want {
			t.Errorf("isDiscard(%q) = %v, want %v", tc.sql, got, tc.want)
		}
	}
}
