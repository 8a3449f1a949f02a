//go:build linux

package rawsock

import "testing"

func TestParseEphemeralRange(t *testing.T) {
	lo, hi, err := parseEphemeralRange("32768\t60999\n")
	if err != nil || lo != 32768 || hi != 60999 {
		t.Errorf("got %d-%d, %v", lo, hi, err)
	}
	for _, bad := range []string{"", "32768", "a b", "60999 32768", "1 70000", "1 2 3"} {
		if _, _, err := parseEphemeralRange(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
