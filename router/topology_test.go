package router

import (
	"testing"
	"time"
)

// A standby tagged noloadbalance gets no reads; when it is the only one,
// there is no standby to read from (the caller falls back to the primary).
func TestPickStandbySkipsNoLoadBalance(t *testing.T) {
	bs := []Backend{
		{Name: "p", Host: "10.0.0.1", Port: 5432, Primary: true, Healthy: true},
		{Name: "s1", Host: "10.0.0.2", Port: 5432, Healthy: true, NoLoadBalance: true},
		{Name: "s2", Host: "10.0.0.3", Port: 5432, Healthy: true},
	}
	v := newView(bs, nil, time.Now())
	for range 200 {
		b, ok := v.pickStandby(0, 0)
		if !ok || b.Name != "s2" {
			t.Fatalf("picked %q (%v), want s2 every time", b.Name, ok)
		}
	}
	bs[2].NoLoadBalance = true
	if b, ok := newView(bs, nil, time.Now()).pickStandby(0, 0); ok {
		t.Fatalf("picked %q although every standby is tagged noloadbalance", b.Name)
	}
}
