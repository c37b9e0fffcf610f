package pgtest

import "testing"

// TestPickPortSkipsRepeats: when the kernel offers a port PickPort has
// already handed out (it does reuse a just-closed port), the next one is
// taken instead.
func TestPickPortSkipsRepeats(t *testing.T) {
	offers := []int{40001, 40001, 40001, 40002}
	listen := func() (int, error) {
		p := offers[0]
		offers = offers[1:]
		return p, nil
	}
	first, err := pickPort(listen)
	if err != nil || first != 40001 {
		t.Fatalf("first pick %d, %v; want 40001", first, err)
	}
	second, err := pickPort(listen)
	if err != nil || second != 40002 {
		t.Fatalf("second pick %d, %v; want 40002, not the repeated 40001", second, err)
	}
}

// TestPickPortNeverRepeats: real picks one after another are all different.
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
