package api

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"trawl/ingest"
)

// createJob submits a task as the test user and returns its job id.
func createJob(t *testing.T, a *testAPI) string {
	t.Helper()
	code, resp := a.do(t, "POST", "/v1/tasks", a.token, `{"options":[{"targets":["198.18.0.1"],"ports":[{"port":5900,"modules":["service"]}]}]}`)
	if code != 200 {
		t.Fatalf("create task: %d %s", code, resp)
	}
	var created struct {
		JobID string `json:"job_id"`
	}
	if err := json.Unmarshal(resp, &created); err != nil || created.JobID == "" {
		t.Fatalf("create task: %s %v", resp, err)
	}
	return created.JobID
}

// path is the part of a screenshot link after the API's base URL.
func linkPath(t *testing.T, a *testAPI, link string) string {
	t.Helper()
	p, ok := strings.CutPrefix(link, a.url)
	if !ok {
		t.Fatalf("link %q is not under the API %q", link, a.url)
	}
	return p
}

func TestScreenshotServedToTheJobsOwnerOnly(t *testing.T) {
	a := startAPI(t, nil)
	job := createJob(t, a)
	png := []byte("\x89PNG\r\n\x1a\n a screenshot")
	link, err := Screenshots{Store: a.store, BaseURL: a.url}.PutScreenshot(context.Background(), job, png)
	if err != nil {
		t.Fatal(err)
	}
	path := linkPath(t, a, link)
	if want := "/v1/tasks/" + job + "/screenshots/" + sha256Hex(png) + ".png"; path != want {
		t.Fatalf("link path %s, want %s", path, want)
	}
	code, body := a.do(t, "GET", path, a.token, "")
	if code != 200 || !bytes.Equal(body, png) {
		t.Fatalf("owner GET: %d %q", code, body)
	}

	other := a.tokens.Issue("usr_other")
	for _, tc := range []struct {
		name, path, token string
		code              int
		errCode           string
	}{
		{"another user's job", path, other, 404, "not_found"},
		{"no token", path, "", 401, "unauthorized"},
		{"unknown screenshot", "/v1/tasks/" + job + "/screenshots/" + strings.Repeat("0", 64) + ".png", a.token, 404, "not_found"},
		{"bad name", "/v1/tasks/" + job + "/screenshots/shot.png", a.token, 422, "invalid_request"},
		{"unknown job", "/v1/tasks/job_nosuch/screenshots/" + sha256Hex(png) + ".png", a.token, 404, "not_found"},
	} {
		code, body := a.do(t, "GET", tc.path, tc.token, "")
		var e apiError
		if code != tc.code || json.Unmarshal(body, &e) != nil || e.Error.Code != tc.errCode {
			t.Errorf("%s: %d %s, want %d with code %s", tc.name, code, body, tc.code, tc.errCode)
		}
	}
}

// TestPublishedScreenshotsReachTheAPIStore: a worker apart from the API
// publishes a screenshot; the API node's blobs service stores it and the
// link serves it. A damaged blob is dropped without stopping the service.
func TestPublishedScreenshotsReachTheAPIStore(t *testing.T) {
	a := startAPI(t, nil)
	job := createJob(t, a)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewBlobIngester(a.bus, a.store, zerolog.Nop()).Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("blob ingester: %v", err)
		}
	}()

	// damaged first: its content does not match its name
	bad, _ := ingest.Encode(nil, &ingest.Blob{JobID: job, SHA256: strings.Repeat("a", 64), ContentType: "image/png", Data: []byte("x")})
	for _, v := range [][]byte{bad, []byte("{not json")} {
		if err := a.bus.Publish(ctx, ingest.TopicBlobs, ingest.Message{Key: []byte(job), Value: v}); err != nil {
			t.Fatal(err)
		}
	}
	shots := PublishedScreenshots{Bus: a.bus, BaseURL: a.url, MaxBytes: 1 << 10}
	png := []byte("\x89PNG\r\n\x1a\n published")
	link, err := shots.PutScreenshot(ctx, job, png)
	if err != nil {
		t.Fatal(err)
	}
	path := linkPath(t, a, link)
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, body := a.do(t, "GET", path, a.token, "")
		if code == 200 {
			if !bytes.Equal(body, png) {
				t.Fatalf("served %q, want %q", body, png)
			}
			break
		}
		if code != 404 || time.Now().After(deadline) {
			t.Fatalf("GET %s: %d %s", path, code, body)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := a.store.Blob(ctx, job, strings.Repeat("a", 64)); err == nil {
		t.Error("the damaged blob was stored")
	}

	if _, err := shots.PutScreenshot(ctx, job, make([]byte, 2<<10)); !errors.Is(err, ErrBlobTooLarge) {
		t.Errorf("oversized screenshot: %v, want ErrBlobTooLarge", err)
	}
	closed := PublishedScreenshots{Bus: failingBus{}, BaseURL: a.url}
	if link, err := closed.PutScreenshot(ctx, job, png); err == nil || link != "" {
		t.Errorf("publish failure: link %q, error %v", link, err)
	}
}

// failingBus refuses every message.
type failingBus struct{}

func (failingBus) Publish(context.Context, string, ...ingest.Message) error {
	return ingest.ErrClosed
}
