package embedded

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"

	"trawl/storage"
)

// PutBlob stores b under its job and content hash; storing the same content
// for the same job again is a no-op. b.SHA256 is computed when empty and
// checked when given.
func (s *Store) PutBlob(ctx context.Context, b storage.Blob) error {
	sum := sha256.Sum256(b.Data)
	hash := hex.EncodeToString(sum[:])
	if b.SHA256 != "" && b.SHA256 != hash {
		return fmt.Errorf("cannot store blob: sha256 %s does not match its content (%s)", b.SHA256, hash)
	}
	if b.JobID == "" || b.ContentType == "" {
		return errors.New("cannot store blob: job id and content type are required")
	}
	_, err := s.write.ExecContext(ctx, `INSERT INTO blobs (sha256, job_id, content_type, data, created)
		VALUES (?, ?, ?, ?, ?) ON CONFLICT (job_id, sha256) DO NOTHING`,
		hash, b.JobID, b.ContentType, b.Data, toMS(b.Created))
	if err != nil {
		return fmt.Errorf("cannot store blob %s: %w", hash, err)
	}
	return nil
}

// Blob returns the blob of job with that hash, or storage.ErrNotFound.
func (s *Store) Blob(ctx context.Context, jobID, sha string) (storage.Blob, error) {
	var b storage.Blob
	var created int64
	err := s.read.QueryRowContext(ctx, `SELECT sha256, job_id, content_type, data, created FROM blobs
		WHERE job_id = ? AND sha256 = ?`, jobID, sha).Scan(&b.SHA256, &b.JobID, &b.ContentType, &b.Data, &created)
	if errors.Is(err, sql.ErrNoRows) {
		return storage.Blob{}, fmt.Errorf("cannot get blob %s: %w", sha, storage.ErrNotFound)
	}
	if err != nil {
		return storage.Blob{}, fmt.Errorf("cannot get blob %s: %w", sha, err)
	}
	b.Created = fromMS(created)
	return b, nil
}
