package ingest

// RecentSet remembers the most recent ids added (job ids seen finishing or
// being canceled, event ids already sent), up to a bound, forgetting the
// oldest first. Consumers of the bus use it where an exact set would grow
// without bound. It is not safe for concurrent use.
type RecentSet struct {
	ids  map[string]struct{}
	ring []string // ids in insertion order
	next int      // slot the next id overwrites once the ring is full
}

// NewRecentSet returns a set holding at most limit ids (at least 1).
func NewRecentSet(limit int) *RecentSet {
	limit = max(limit, 1)
	return &RecentSet{ids: make(map[string]struct{}, limit), ring: make([]string, 0, limit)}
}

// Add remembers id, forgetting the oldest id when the set is full.
func (s *RecentSet) Add(id string) {
	if _, ok := s.ids[id]; ok {
		return
	}
	if len(s.ring) < cap(s.ring) {
		s.ring = append(s.ring, id)
	} else {
		delete(s.ids, s.ring[s.next])
		s.ring[s.next] = id
		s.next = (s.next + 1) % len(s.ring)
	}
	s.ids[id] = struct{}{}
}

// Has reports whether id is remembered.
func (s *RecentSet) Has(id string) bool {
	_, ok := s.ids[id]
	return ok
}

// Len is the number of ids remembered.
func (s *RecentSet) Len() int { return len(s.ids) }
