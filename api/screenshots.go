package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/rs/zerolog"
	"github.com/valyala/fasthttp"

	"trawl/ingest"
	"trawl/storage"
)

// BlobStore keeps probe artifacts (VNC screenshots).
type BlobStore interface {
	PutBlob(ctx context.Context, b storage.Blob) error
	Blob(ctx context.Context, jobID, sha string) (storage.Blob, error)
}

// Screenshots stores VNC screenshots and links them to the API route that
// serves each to the job's owner; it is the vnc module's ScreenshotStore.
type Screenshots struct {
	Store   BlobStore
	BaseURL string // the API's public URL
}

// PutScreenshot stores png for jobID and returns its link.
func (s Screenshots) PutScreenshot(ctx context.Context, jobID string, png []byte) (string, error) {
	b := storage.Blob{JobID: jobID, ContentType: "image/png", Data: png, Created: time.Now().UTC()}
	if err := s.Store.PutBlob(ctx, b); err != nil {
		return "", err
	}
	return screenshotURL(s.BaseURL, jobID, sha256Hex(png)), nil
}

func screenshotURL(base, jobID, sha string) string {
	return strings.TrimRight(base, "/") + "/v1/tasks/" + jobID + "/screenshots/" + sha + ".png"
}

var shaPNG = regexp.MustCompile(`^([0-9a-f]{64})\.png$`)

// screenshot serves a stored screenshot to the owner of its job.
func (s *Server) screenshot(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, params []string) error {
	j, err := s.ownJob(rc, clientID, params[0])
	if err != nil {
		return err
	}
	m := shaPNG.FindStringSubmatch(params[1])
	if m == nil {
		return errInvalid("a screenshot is named <sha256>.png", []FieldError{{Field: "path", Message: "bad screenshot name"}})
	}
	if s.deps.Blobs == nil {
		return errNotFound("screenshot " + m[1])
	}
	b, err := s.deps.Blobs.Blob(rc, j.ID, m[1])
	if errors.Is(err, storage.ErrNotFound) {
		return errNotFound("screenshot " + m[1])
	}
	if err != nil {
		return err
	}
	ctx.SetStatusCode(http.StatusOK)
	ctx.SetContentType(b.ContentType)
	ctx.Response.Header.Set("Cache-Control", "private, max-age=86400, immutable")
	ctx.SetBody(b.Data)
	return nil
}

// PublishedScreenshots is the ScreenshotStore of a worker that runs apart
// from the API: it publishes each screenshot on the blobs topic, and the API
// node's BlobIngester stores it where the link is served from. The link can
// answer 404 for the moment the blob is on its way.
type PublishedScreenshots struct {
	Bus      Publisher
	BaseURL  string // the API's public URL
	MaxBytes int    // larger screenshots are refused (the bus would be)
}

// ErrBlobTooLarge: a screenshot is larger than the bus carries.
var ErrBlobTooLarge = errors.New("screenshot too large for the bus")

// PutScreenshot publishes png for jobID and returns its link.
func (p PublishedScreenshots) PutScreenshot(ctx context.Context, jobID string, png []byte) (string, error) {
	if p.MaxBytes > 0 && len(png) > p.MaxBytes {
		return "", fmt.Errorf("%w: %d bytes, at most %d", ErrBlobTooLarge, len(png), p.MaxBytes)
	}
	sha := sha256Hex(png)
	b := ingest.Blob{JobID: jobID, SHA256: sha, ContentType: "image/png", Data: png, Created: time.Now().UnixMilli()}
	v, err := ingest.Encode(nil, &b)
	if err != nil {
		return "", err
	}
	if err := p.Bus.Publish(ctx, ingest.TopicBlobs, ingest.Message{Key: []byte(jobID), Value: v}); err != nil {
		return "", fmt.Errorf("cannot publish the screenshot: %w", err)
	}
	return screenshotURL(p.BaseURL, jobID, sha), nil
}

// BlobIngester stores the blobs workers publish (PublishedScreenshots) in
// the API node's store. Replicas share the group; a blob is acked once
// stored, and one that cannot be read or whose content does not match its
// name is dropped with a log line.
type BlobIngester struct {
	bus   ingest.Bus
	store BlobStore
	log   zerolog.Logger
	group string
}

// NewBlobIngester returns the blobs service of the API role.
func NewBlobIngester(bus ingest.Bus, store BlobStore, log zerolog.Logger) *BlobIngester {
	return &BlobIngester{bus: bus, store: store, log: log, group: "blobs"}
}

// Run stores blobs until ctx ends; a store failure is retried with backoff
// (the blob stays unacked meanwhile).
func (b *BlobIngester) Run(ctx context.Context) error {
	sub, err := b.bus.Subscribe(ctx, ingest.TopicBlobs, b.group)
	if err != nil {
		return fmt.Errorf("cannot subscribe to %s: %w", ingest.TopicBlobs, err)
	}
	defer sub.Close()
	for {
		d, err := sub.Fetch(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("cannot fetch from %s: %w", ingest.TopicBlobs, err)
		}
		var rec ingest.Blob
		if err := ingest.Decode(d.Value, &rec); err != nil || rec.JobID == "" || rec.ContentType == "" || sha256Hex(rec.Data) != rec.SHA256 {
			b.log.Warn().Err(err).Str("job_id", rec.JobID).Str("sha256", rec.SHA256).Msg("dropping an unreadable or damaged blob")
			_ = sub.Ack(ctx, d)
			continue
		}
		blob := storage.Blob{SHA256: rec.SHA256, JobID: rec.JobID, ContentType: rec.ContentType, Data: rec.Data,
			Created: time.UnixMilli(rec.Created).UTC()}
		for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
			err := b.store.PutBlob(ctx, blob)
			if err == nil {
				break
			}
			b.log.Error().Err(err).Str("job_id", rec.JobID).Msg("cannot store a blob, retrying")
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		if err := sub.Ack(ctx, d); err != nil && ctx.Err() == nil {
			return fmt.Errorf("cannot ack a blob: %w", err)
		}
	}
}
