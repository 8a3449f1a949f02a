package clickhouse

import (
	"context"
	"testing"

	"trawl/ingest"
	"trawl/storage/storagetest"
)

// The suite's batches land in separate parts, never merged: the answers
// must hold before merges.
func TestAnalytics(t *testing.T) {
	storagetest.RunAnalytics(t, func(t *testing.T) storagetest.AnalyticsStore {
		return openStore(t, testConfig(t))
	})
}

// mergedStore merges the tables after every insert: the same answers must
// hold once ReplacingMergeTree has collapsed the exact copies.
type mergedStore struct {
	*Store
}

func (m mergedStore) InsertEvents(ctx context.Context, events []ingest.Event) error {
	if err := m.Store.InsertEvents(ctx, events); err != nil {
		return err
	}
	for _, table := range []string{"events", "ip_history"} {
		if err := m.conn.Exec(ctx, `OPTIMIZE TABLE `+table+` FINAL`); err != nil {
			return err
		}
	}
	return nil
}

func TestAnalyticsAfterMerge(t *testing.T) {
	storagetest.RunAnalytics(t, func(t *testing.T) storagetest.AnalyticsStore {
		return mergedStore{openStore(t, testConfig(t))}
	})
}
