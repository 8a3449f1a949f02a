package ingest

import "testing"

func TestRecentSetForgetsOldest(t *testing.T) {
	s := NewRecentSet(2)
	s.Add("a")
	s.Add("b")
	s.Add("b") // already there: no eviction
	if !s.Has("a") || !s.Has("b") || s.Len() != 2 {
		t.Fatalf("after a, b, b: has a %v, b %v, len %d", s.Has("a"), s.Has("b"), s.Len())
	}
	s.Add("c")
	if s.Has("a") || !s.Has("b") || !s.Has("c") || s.Len() != 2 {
		t.Fatalf("after c: has a %v, b %v, c %v, len %d", s.Has("a"), s.Has("b"), s.Has("c"), s.Len())
	}
	s.Add("d")
	if s.Has("b") || !s.Has("c") || !s.Has("d") {
		t.Fatal("the second eviction did not drop the next oldest")
	}
	if z := NewRecentSet(0); func() bool { z.Add("x"); return !z.Has("x") }() {
		t.Fatal("a zero limit must still hold one id")
	}
}
