package engine

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultExclusions(t *testing.T) {
	ex := DefaultExclusions()
	for _, a := range []string{"0.0.0.0", "10.1.2.3", "100.64.0.1", "127.0.0.1", "169.254.1.1", "172.16.0.1", "172.31.255.255",
		"192.0.0.8", "192.0.2.1", "192.88.99.1", "192.168.1.1", "198.18.0.1", "198.19.255.255", "198.51.100.1",
		"203.0.113.1", "224.0.0.1", "239.255.255.255", "240.0.0.1", "255.255.255.255"} {
		if !ex.Contains(ip(t, a)) {
			t.Errorf("%s not excluded by default", a)
		}
	}
	for _, a := range []string{"1.1.1.1", "8.8.8.8", "100.63.255.255", "100.128.0.0", "172.32.0.0", "198.17.255.255", "198.20.0.0", "223.255.255.255"} {
		if ex.Contains(ip(t, a)) {
			t.Errorf("%s excluded by default", a)
		}
	}
}

func TestPolicyApply(t *testing.T) {
	p := DefaultPolicy()
	set, err := ParseTargets([]string{"127.0.0.0/30", "8.8.8.8", "198.18.0.0/24"})
	if err != nil {
		t.Fatal(err)
	}
	allowed, excluded := p.Apply(set)
	if allowed.String() != "8.8.8.8" || excluded != 4+256 {
		t.Errorf("Apply = %s, %d excluded; want 8.8.8.8, 260", allowed, excluded)
	}
	if got := p.Reasons(NewIPSet(Range{ip(t, "127.0.0.1"), ip(t, "127.0.0.1")})); len(got) != 1 || !strings.Contains(got[0], "127.0.0.0/8") || !strings.Contains(got[0], "loopback") {
		t.Errorf("Reasons(127.0.0.1) = %q", got)
	}

	// the zero policy excludes nothing
	if a, n := (Policy{}).Apply(set); a.Size() != set.Size() || n != 0 {
		t.Errorf("zero Policy excluded %d", n)
	}
}

func TestPolicyConfigAllow(t *testing.T) {
	cfg := PolicyConfig{Allow: []string{"127.0.0.0/8", "198.18.0.0/15"}}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	set, _ := ParseTargets([]string{"127.0.0.1", "198.19.1.1", "10.0.0.1"})
	allowed, excluded := p.Apply(set)
	if allowed.String() != "127.0.0.1,198.19.1.1" || excluded != 1 {
		t.Errorf("Apply = %s, %d excluded; want loopback and benchmarking re-admitted", allowed, excluded)
	}
	// an allow only re-admits what it names
	p2, _ := (&PolicyConfig{Allow: []string{"198.18.0.0/24"}}).Build()
	if !p2.Excluded().Contains(ip(t, "198.18.1.0")) || p2.Excluded().Contains(ip(t, "198.18.0.7")) {
		t.Error("allow 198.18.0.0/24 admitted the wrong range")
	}

	bad := PolicyConfig{Allow: []string{"198.18.0.0/15", "nope!"}}
	if err := bad.Validate(); !errors.Is(err, ErrTarget) {
		t.Errorf("Validate with a bad allow = %v, want ErrTarget", err)
	}
	if _, err := bad.Build(); !errors.Is(err, ErrTarget) {
		t.Errorf("Build with a bad allow = %v, want ErrTarget", err)
	}
}

func TestPolicyExcludeFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "exclude.txt")
	content := "# operator exclusions\n\n8.8.8.0/24   # a resolver\n 1.1.1.1\n9.9.9.1-9.9.9.3\n"
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := PolicyConfig{ExcludeFile: path, Allow: []string{"9.9.9.2"}}
	p, err := cfg.Build()
	if err != nil {
		t.Fatal(err)
	}
	for a, want := range map[string]bool{
		"8.8.8.8": true, "8.8.9.1": false, "1.1.1.1": true, "9.9.9.1": true, "9.9.9.2": false, "9.9.9.3": true,
		"127.0.0.1": true, "4.4.4.4": false,
	} {
		if got := p.Excluded().Contains(ip(t, a)); got != want {
			t.Errorf("%s excluded = %v, want %v", a, got, want)
		}
	}
	reasons := p.Reasons(NewIPSet(Range{ip(t, "8.8.8.8"), ip(t, "8.8.8.8")}))
	if len(reasons) != 1 || !strings.Contains(reasons[0], path+":3") {
		t.Errorf("Reasons(8.8.8.8) = %q, want the file and line", reasons)
	}

	badPath := filepath.Join(dir, "bad.txt")
	if err := os.WriteFile(badPath, []byte("8.8.8.0/24\nexample.com\n1.2.3.4/40\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = (&PolicyConfig{ExcludeFile: badPath}).Build()
	if !errors.Is(err, ErrHostname) || !errors.Is(err, ErrTarget) ||
		!strings.Contains(err.Error(), badPath+":2") || !strings.Contains(err.Error(), badPath+":3") {
		t.Errorf("bad file error = %v, want both bad lines named", err)
	}
	if _, err := (&PolicyConfig{ExcludeFile: filepath.Join(dir, "missing")}).Build(); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file error = %v, want ErrNotExist", err)
	}
}

func TestPolicyConfigFlags(t *testing.T) {
	var cfg PolicyConfig
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	cfg.RegisterFlags(fs, "scanner.")
	if err := fs.Parse([]string{"-scanner.allow", "127.0.0.0/8, 198.18.0.0/15,", "-scanner.exclude-file", "/x"}); err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.Allow, " ") != "127.0.0.0/8 198.18.0.0/15" || cfg.ExcludeFile != "/x" {
		t.Errorf("flags parsed into %+v", cfg)
	}
}
