package probes

import (
	"errors"
	"fmt"
	"sort"
)

// ErrDuplicateModule is returned by NewRegistry when two modules share a name.
var ErrDuplicateModule = errors.New("duplicate module name")

// Registry is the set of modules a worker can run, by name. It is built from
// an explicit list so what a binary can probe is visible in one place.
type Registry struct {
	byName map[string]Module
	names  []string
}

// NewRegistry indexes mods by name; a nil module, an empty name or two
// modules with one name are errors.
func NewRegistry(mods ...Module) (*Registry, error) {
	r := &Registry{byName: make(map[string]Module, len(mods))}
	for i, m := range mods {
		if m == nil {
			return nil, fmt.Errorf("cannot register module %d: nil module", i)
		}
		name := m.Name()
		if name == "" {
			return nil, fmt.Errorf("cannot register module %d (%T): empty name", i, m)
		}
		if _, dup := r.byName[name]; dup {
			return nil, fmt.Errorf("cannot register module %q: %w", name, ErrDuplicateModule)
		}
		r.byName[name] = m
		r.names = append(r.names, name)
	}
	sort.Strings(r.names)
	return r, nil
}

// Get returns the module called name.
func (r *Registry) Get(name string) (Module, bool) {
	m, ok := r.byName[name]
	return m, ok
}

// Names lists the registered modules, sorted.
func (r *Registry) Names() []string {
	return append([]string(nil), r.names...)
}
