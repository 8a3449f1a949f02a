package engine

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
)

// specialPurpose lists the ranges of the IANA IPv4 Special-Purpose Address
// Registry (https://www.iana.org/assignments/iana-ipv4-special-registry/,
// RFC 6890) that are not globally reachable, plus multicast (RFC 5771) and
// the limited broadcast address. Scanning them from the internet is either
// meaningless or hits someone's private network, so they are excluded unless
// an operator allows them explicitly (tests allow loopback and 198.18.0.0/15).
var specialPurpose = []struct{ cidr, name string }{
	{"0.0.0.0/8", "this network, RFC 791"},
	{"10.0.0.0/8", "private-use, RFC 1918"},
	{"100.64.0.0/10", "shared address space, RFC 6598"},
	{"127.0.0.0/8", "loopback, RFC 1122"},
	{"169.254.0.0/16", "link local, RFC 3927"},
	{"172.16.0.0/12", "private-use, RFC 1918"},
	{"192.0.0.0/24", "IETF protocol assignments, RFC 6890"},
	{"192.0.2.0/24", "documentation TEST-NET-1, RFC 5737"},
	{"192.88.99.0/24", "deprecated 6to4 relay anycast, RFC 7526"},
	{"192.168.0.0/16", "private-use, RFC 1918"},
	{"198.18.0.0/15", "benchmarking, RFC 2544"},
	{"198.51.100.0/24", "documentation TEST-NET-2, RFC 5737"},
	{"203.0.113.0/24", "documentation TEST-NET-3, RFC 5737"},
	{"224.0.0.0/4", "multicast, RFC 5771"},
	{"240.0.0.0/4", "reserved, RFC 1112"},
	{"255.255.255.255/32", "limited broadcast, RFC 919"},
}

// DefaultExclusions returns the special-purpose ranges excluded by default.
func DefaultExclusions() IPSet {
	return DefaultPolicy().excluded
}

func defaultRules() []exclusion {
	rules := make([]exclusion, len(specialPurpose))
	for i, sp := range specialPurpose {
		r, err := ParseTarget(sp.cidr)
		if err != nil { // the table above is constant and parses
			continue
		}
		rules[i] = exclusion{name: sp.cidr + " (" + sp.name + ")", set: NewIPSet(r)}
	}
	return rules
}

// exclusion is one named rule, so an error can say why a target is refused.
type exclusion struct {
	name string
	set  IPSet
}

// Policy says which addresses may be scanned: everything except its
// exclusions (minus explicit allows). The zero Policy excludes nothing; use
// DefaultPolicy or PolicyConfig.Build.
type Policy struct {
	rules    []exclusion
	excluded IPSet
}

// DefaultPolicy excludes DefaultExclusions and allows nothing back.
func DefaultPolicy() Policy { return newPolicy(defaultRules(), IPSet{}) }

func newPolicy(rules []exclusion, allow IPSet) Policy {
	var p Policy
	var all []Range
	for _, r := range rules {
		r.set = r.set.Subtract(allow)
		if r.set.Size() == 0 {
			continue
		}
		p.rules = append(p.rules, r)
		all = append(all, r.set.Ranges()...)
	}
	p.excluded = NewIPSet(all...)
	return p
}

// Excluded returns every excluded address.
func (p Policy) Excluded() IPSet { return p.excluded }

// Apply returns the addresses of set the policy allows and how many it excluded.
func (p Policy) Apply(set IPSet) (allowed IPSet, excluded uint64) {
	allowed = set.Subtract(p.excluded)
	return allowed, set.Size() - allowed.Size()
}

// Reasons names the exclusion rules that cover part of set.
func (p Policy) Reasons(set IPSet) []string {
	var names []string
	for _, r := range p.rules {
		if r.set.Intersects(set) {
			names = append(names, r.name)
		}
	}
	return names
}

// PolicyConfig configures the exclusion list.
type PolicyConfig struct {
	// ExcludeFile adds exclusions: one address, range or CIDR per line,
	// '#' starts a comment.
	ExcludeFile string
	// Allow re-admits ranges, subtracting them from every exclusion,
	// including the special-purpose defaults.
	Allow []string
}

// DefaultPolicyConfig returns the defaults RegisterFlags sets.
func DefaultPolicyConfig() PolicyConfig { return PolicyConfig{} }

// RegisterFlags registers prefix+"exclude-file" and prefix+"allow" (comma-separated).
func (c *PolicyConfig) RegisterFlags(fs *flag.FlagSet, prefix string) {
	*c = DefaultPolicyConfig()
	fs.StringVar(&c.ExcludeFile, prefix+"exclude-file", c.ExcludeFile,
		"file of extra ranges never to scan: one address, range or CIDR per line, # comments")
	fs.Func(prefix+"allow", "comma-separated ranges to scan even though excluded (e.g. 198.18.0.0/15)",
		func(s string) error {
			c.Allow = nil
			for _, part := range strings.Split(s, ",") {
				if part = strings.TrimSpace(part); part != "" {
					c.Allow = append(c.Allow, part)
				}
			}
			return nil
		})
}

// Validate checks the allow list (the exclude file is read by Build).
func (c *PolicyConfig) Validate() error {
	if len(c.Allow) == 0 {
		return nil
	}
	if _, err := ParseTargets(c.Allow); err != nil {
		return fmt.Errorf("invalid allow list: %w", err)
	}
	return nil
}

// Build reads the exclude file and returns the policy.
func (c *PolicyConfig) Build() (Policy, error) {
	rules := defaultRules()
	if c.ExcludeFile != "" {
		fileRules, err := readExcludeFile(c.ExcludeFile)
		if err != nil {
			return Policy{}, err
		}
		rules = append(rules, fileRules...)
	}
	var allow IPSet
	if len(c.Allow) > 0 {
		var err error
		if allow, err = ParseTargets(c.Allow); err != nil {
			return Policy{}, fmt.Errorf("invalid allow list: %w", err)
		}
	}
	return newPolicy(rules, allow), nil
}

func readExcludeFile(path string) ([]exclusion, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read exclude file: %w", err)
	}
	defer f.Close()
	var rules []exclusion
	var errs []error
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text, _, _ := strings.Cut(sc.Text(), "#")
		if text = strings.TrimSpace(text); text == "" {
			continue
		}
		r, err := ParseTarget(text)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", path, line, err))
			continue
		}
		rules = append(rules, exclusion{name: fmt.Sprintf("%s (%s:%d)", text, path, line), set: NewIPSet(r)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cannot read exclude file: %w", err)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("invalid exclude file: %w", errors.Join(errs...))
	}
	return rules, nil
}
