package embedded

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/storage"
)

func TestBlobs(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, t.TempDir()+"/b.db", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	png := []byte("\x89PNG\r\n\x1a\nnot really")
	sum := sha256.Sum256(png)
	hash := hex.EncodeToString(sum[:])
	b := storage.Blob{JobID: "job_1", ContentType: "image/png", Data: png, Created: time.Now()}
	if err := s.PutBlob(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBlob(ctx, b); err != nil { // the same content again: no-op
		t.Fatalf("second put: %v", err)
	}
	got, err := s.Blob(ctx, "job_1", hash)
	if err != nil || !bytes.Equal(got.Data, png) || got.ContentType != "image/png" || got.SHA256 != hash {
		t.Fatalf("get: %+v %v", got, err)
	}
	if _, err := s.Blob(ctx, "job_2", hash); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("another job's blob: %v, want ErrNotFound", err)
	}
	bad := b
	bad.SHA256 = "00"
	if err := s.PutBlob(ctx, bad); err == nil {
		t.Fatal("a blob whose hash does not match its content was stored")
	}
	if err := s.PutBlob(ctx, storage.Blob{Data: png}); err == nil {
		t.Fatal("a blob without job and content type was stored")
	}
}
