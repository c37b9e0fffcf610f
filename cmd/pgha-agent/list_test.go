package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/pgha/pgha/agent"
)

// `pgha-agent list` names every data directory a member keeps aside after a
// re-clone, with its path on that host.
func TestListShowsKeptDataDirs(t *testing.T) {
	v := agent.ClusterView{Scope: "main", Members: []agent.MemberStatus{
		{Name: "n1", Role: "leader", State: "running"},
		{Name: "n2", Role: "replica", State: "streaming", KeptDataDirs: []string{"/pg/data.pgha-replaced-20240501T120000Z"}},
	}}
	var b bytes.Buffer
	printView(&b, v)
	if !strings.Contains(b.String(), "n2 keeps a replaced data directory: /pg/data.pgha-replaced-20240501T120000Z") {
		t.Errorf("list does not show the kept data directory:\n%s", b.String())
	}
}
