package pgtest

import "testing"

// TestPickPortNeverRepeats: ports picked one after another are all
// different, though each listener is closed before the next is opened.
func TestPickPortNeverRepeats(t *testing.T) {
	seen := map[int]bool{}
	for range 200 {
		p, err := PickPort()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}
