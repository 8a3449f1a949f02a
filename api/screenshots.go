package api

import (
	"context"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

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
