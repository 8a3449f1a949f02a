package main

import "testing"

// trawl scan runs on one processor only at a set rate up to
// oneProcessorMaxRate and without modules (they probe on many goroutines).
func TestOneProcessorScan(t *testing.T) {
	for _, c := range []struct {
		rate, modules int
		want          bool
	}{
		{1000, 0, true}, {oneProcessorMaxRate, 0, true}, {oneProcessorMaxRate + 1, 0, false},
		{0, 0, false}, {1000, 1, false},
	} {
		if got := oneProcessorScan(c.rate, c.modules); got != c.want {
			t.Errorf("oneProcessorScan(%d, %d) = %v, want %v", c.rate, c.modules, got, c.want)
		}
	}
}
