package storagetest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"trawl/ingest"
	"trawl/storage"
)

// MetaStore is the users and jobs part of a store.
type MetaStore interface {
	CreateUser(ctx context.Context, u storage.User) error
	UserByAppID(ctx context.Context, appID string) (storage.User, error)
	User(ctx context.Context, id string) (storage.User, error)
	Users(ctx context.Context) ([]storage.User, error)
	DeleteUser(ctx context.Context, id string) error

	CreateJob(ctx context.Context, j storage.Job) error
	Job(ctx context.Context, id string) (storage.Job, error)
	Jobs(ctx context.Context, q storage.JobQuery) ([]storage.Job, error)
	UpdateJob(ctx context.Context, j storage.Job) error
}

// RunMeta runs the user and job cases, each on a store from open. open
// should register the store's cleanup with t.Cleanup.
func RunMeta(t *testing.T, open func(t *testing.T) MetaStore) {
	cases := []struct {
		name string
		run  func(t *testing.T, s MetaStore)
	}{
		{"UserRoundTrip", testUserRoundTrip},
		{"UserConflict", testUserConflict},
		{"UserNotFound", testUserNotFound},
		{"UsersAndDelete", testUsersAndDelete},
		{"JobRoundTrip", testJobRoundTrip},
		{"JobConflict", testJobConflict},
		{"JobNotFound", testJobNotFound},
		{"JobUpdate", testJobUpdate},
		{"JobsList", testJobsList},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.run(t, open(t))
		})
	}
}

// now is the current time at the stores' precision (milliseconds).
func now() time.Time { return time.UnixMilli(time.Now().UnixMilli()) }

func newUser() storage.User {
	return storage.User{
		ID:         ingest.NewID("usr_"),
		AppID:      ingest.NewID("app_"),
		SecretHash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
		Name:       "Ada Lovelace",
		Created:    now(),
	}
}

func mustCreateUser(t *testing.T, s MetaStore, u storage.User) {
	t.Helper()
	if err := s.CreateUser(t.Context(), u); err != nil {
		t.Fatalf("CreateUser(%s): %v", u.ID, err)
	}
}

func assertUser(t *testing.T, got, want storage.User) {
	t.Helper()
	if got.ID != want.ID || got.AppID != want.AppID || got.SecretHash != want.SecretHash ||
		got.Name != want.Name || !got.Created.Equal(want.Created) {
		t.Fatalf("user = %+v, want %+v", got, want)
	}
}

func testUserRoundTrip(t *testing.T, s MetaStore) {
	ctx := t.Context()
	u := newUser()
	mustCreateUser(t, s, u)
	got, err := s.User(ctx, u.ID)
	if err != nil {
		t.Fatalf("User: %v", err)
	}
	assertUser(t, got, u)
	got, err = s.UserByAppID(ctx, u.AppID)
	if err != nil {
		t.Fatalf("UserByAppID: %v", err)
	}
	assertUser(t, got, u)
}

func testUserConflict(t *testing.T, s MetaStore) {
	ctx := t.Context()
	u := newUser()
	mustCreateUser(t, s, u)

	sameID := newUser()
	sameID.ID = u.ID
	if err := s.CreateUser(ctx, sameID); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("CreateUser with a taken id = %v, want ErrConflict", err)
	}
	sameApp := newUser()
	sameApp.AppID = u.AppID
	if err := s.CreateUser(ctx, sameApp); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("CreateUser with a taken app id = %v, want ErrConflict", err)
	}
	// the failed creates changed nothing
	got, err := s.UserByAppID(ctx, u.AppID)
	if err != nil {
		t.Fatalf("UserByAppID: %v", err)
	}
	assertUser(t, got, u)
	if _, err := s.User(ctx, sameApp.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("User of a conflicting create = %v, want ErrNotFound", err)
	}
}

func testUserNotFound(t *testing.T, s MetaStore) {
	ctx := t.Context()
	if _, err := s.User(ctx, ingest.NewID("usr_")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("User(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.UserByAppID(ctx, ingest.NewID("app_")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("UserByAppID(unknown) = %v, want ErrNotFound", err)
	}
	if err := s.DeleteUser(ctx, ingest.NewID("usr_")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("DeleteUser(unknown) = %v, want ErrNotFound", err)
	}
}

func testUsersAndDelete(t *testing.T, s MetaStore) {
	ctx := t.Context()
	users := []storage.User{newUser(), newUser(), newUser()}
	for _, u := range users {
		mustCreateUser(t, s, u)
	}
	listed := func() map[string]storage.User {
		t.Helper()
		all, err := s.Users(ctx)
		if err != nil {
			t.Fatalf("Users: %v", err)
		}
		m := make(map[string]storage.User, len(all))
		for _, u := range all {
			m[u.ID] = u
		}
		return m
	}
	got := listed()
	for _, u := range users {
		g, ok := got[u.ID]
		if !ok {
			t.Fatalf("Users lacks %s", u.ID)
		}
		assertUser(t, g, u)
	}

	if err := s.DeleteUser(ctx, users[1].ID); err != nil {
		t.Fatalf("DeleteUser: %v", err)
	}
	if _, err := s.User(ctx, users[1].ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("User after delete = %v, want ErrNotFound", err)
	}
	if _, err := s.UserByAppID(ctx, users[1].AppID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("UserByAppID after delete = %v, want ErrNotFound", err)
	}
	if err := s.DeleteUser(ctx, users[1].ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("second DeleteUser = %v, want ErrNotFound", err)
	}
	got = listed()
	if _, ok := got[users[1].ID]; ok {
		t.Fatal("Users still lists the deleted user")
	}
	for _, u := range []storage.User{users[0], users[2]} {
		if _, ok := got[u.ID]; !ok {
			t.Fatalf("Users lost %s after another user's delete", u.ID)
		}
	}
	// the app id is free again
	again := newUser()
	again.AppID = users[1].AppID
	mustCreateUser(t, s, again)
}

func newJobRecord(client, state string) storage.Job {
	created := now()
	return storage.Job{
		ID:          ingest.NewID("job_"),
		ClientID:    client,
		Type:        ingest.JobScan,
		Description: "weekly sweep",
		State:       state,
		Request:     json.RawMessage(`{ "type": "scan", "options": [ {"targets": ["198.18.0.0/24"], "ports": [{"port": 22}]} ] }`),
		Created:     created,
		Updated:     created,
	}
}

func mustCreateJob(t *testing.T, s MetaStore, j storage.Job) {
	t.Helper()
	if err := s.CreateJob(t.Context(), j); err != nil {
		t.Fatalf("CreateJob(%s): %v", j.ID, err)
	}
}

func mustJob(t *testing.T, s MetaStore, id string) storage.Job {
	t.Helper()
	j, err := s.Job(t.Context(), id)
	if err != nil {
		t.Fatalf("Job(%s): %v", id, err)
	}
	return j
}

func assertJob(t *testing.T, got, want storage.Job) {
	t.Helper()
	same := got.ID == want.ID && got.ClientID == want.ClientID && got.Type == want.Type &&
		got.Description == want.Description && got.State == want.State && got.Progress == want.Progress &&
		got.Counts == want.Counts && got.Error == want.Error && bytes.Equal(got.Request, want.Request) &&
		got.Created.Equal(want.Created) && got.Started.Equal(want.Started) &&
		got.Finished.Equal(want.Finished) && got.Updated.Equal(want.Updated)
	if !same {
		t.Fatalf("job = %+v\nwant %+v", got, want)
	}
	// an unset time stays unset, so `omitzero` keeps it out of API answers
	if got.Started.IsZero() != want.Started.IsZero() || got.Finished.IsZero() != want.Finished.IsZero() {
		t.Fatalf("job times started=%v finished=%v, want started=%v finished=%v",
			got.Started, got.Finished, want.Started, want.Finished)
	}
}

func testJobRoundTrip(t *testing.T, s MetaStore) {
	j := newJobRecord(newClient(), ingest.StateQueued)
	mustCreateJob(t, s, j)
	assertJob(t, mustJob(t, s, j.ID), j)

	full := newJobRecord(newClient(), ingest.StateFailed)
	full.Progress = 0.25
	full.Counts = ingest.JobCounts{Targets: 1 << 40, Sent: 123456, OpenPorts: 7, Probes: 6, Results: 5, Errors: 1}
	full.Error = "scanner shard 2 lost"
	full.Started = full.Created.Add(time.Second)
	full.Finished = full.Created.Add(time.Minute)
	full.Updated = full.Finished
	mustCreateJob(t, s, full)
	assertJob(t, mustJob(t, s, full.ID), full)
}

func testJobConflict(t *testing.T, s MetaStore) {
	j := newJobRecord(newClient(), ingest.StateQueued)
	mustCreateJob(t, s, j)
	dup := newJobRecord(newClient(), ingest.StateRunning)
	dup.ID = j.ID
	if err := s.CreateJob(t.Context(), dup); !errors.Is(err, storage.ErrConflict) {
		t.Fatalf("CreateJob with a taken id = %v, want ErrConflict", err)
	}
	assertJob(t, mustJob(t, s, j.ID), j)
}

func testJobNotFound(t *testing.T, s MetaStore) {
	ctx := t.Context()
	if _, err := s.Job(ctx, ingest.NewID("job_")); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Job(unknown) = %v, want ErrNotFound", err)
	}
	j := newJobRecord(newClient(), ingest.StateRunning)
	if err := s.UpdateJob(ctx, j); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("UpdateJob(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := s.Job(ctx, j.ID); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Job after a failed update = %v, want ErrNotFound", err)
	}
}

func testJobUpdate(t *testing.T, s MetaStore) {
	ctx := t.Context()
	j := newJobRecord(newClient(), ingest.StateQueued)
	other := newJobRecord(j.ClientID, ingest.StateQueued)
	mustCreateJob(t, s, j)
	mustCreateJob(t, s, other)

	j.State = ingest.StateRunning
	j.Started = j.Created.Add(1500 * time.Millisecond)
	j.Progress = 0.5
	j.Counts = ingest.JobCounts{Targets: 256, Sent: 128, OpenPorts: 3}
	j.Updated = j.Started
	if err := s.UpdateJob(ctx, j); err != nil {
		t.Fatalf("UpdateJob: %v", err)
	}
	assertJob(t, mustJob(t, s, j.ID), j)

	j.State = ingest.StateSucceeded
	j.Progress = 1
	j.Counts.Sent, j.Counts.Results = 256, 3
	j.Finished = j.Started.Add(time.Minute)
	j.Updated = j.Finished
	j.Description = "renamed"
	if err := s.UpdateJob(ctx, j); err != nil {
		t.Fatalf("UpdateJob: %v", err)
	}
	assertJob(t, mustJob(t, s, j.ID), j)
	// only the job with that id changed
	assertJob(t, mustJob(t, s, other.ID), other)
}

func testJobsList(t *testing.T, s MetaStore) {
	ctx := t.Context()
	alice, bob := newClient(), newClient()
	states := []string{ingest.StateQueued, ingest.StateRunning, ingest.StateSucceeded}
	var aliceJobs []storage.Job // oldest first
	for i := range 14 {
		j := newJobRecord(alice, states[i%len(states)])
		aliceJobs = append(aliceJobs, j)
		mustCreateJob(t, s, j)
		if i%4 == 0 {
			mustCreateJob(t, s, newJobRecord(bob, ingest.StateRunning))
		}
	}
	newestFirst := slices.Clone(aliceJobs)
	slices.Reverse(newestFirst)
	wantIDs := func(jobs []storage.Job) []string {
		ids := make([]string, len(jobs))
		for i, j := range jobs {
			ids[i] = j.ID
		}
		return ids
	}
	list := func(q storage.JobQuery) []string {
		t.Helper()
		jobs, err := s.Jobs(ctx, q)
		if err != nil {
			t.Fatalf("Jobs(%+v): %v", q, err)
		}
		return wantIDs(jobs)
	}

	if got, want := list(storage.JobQuery{ClientID: alice}), wantIDs(newestFirst); !slices.Equal(got, want) {
		t.Fatalf("Jobs = %v\nwant %v", got, want)
	}

	// pages with the cursor cover every job exactly once, newest first
	var paged []string
	before := ""
	for range len(aliceJobs) + 1 {
		page := list(storage.JobQuery{ClientID: alice, Before: before, Limit: 4})
		if len(page) > 4 {
			t.Fatalf("page of %d jobs, limit 4", len(page))
		}
		if len(page) == 0 {
			break
		}
		paged = append(paged, page...)
		before = page[len(page)-1]
	}
	if want := wantIDs(newestFirst); !slices.Equal(paged, want) {
		t.Fatalf("paged Jobs = %v\nwant %v", paged, want)
	}

	var running []storage.Job
	for _, j := range newestFirst {
		if j.State == ingest.StateRunning {
			running = append(running, j)
		}
	}
	q := storage.JobQuery{ClientID: alice, State: ingest.StateRunning}
	if got, want := list(q), wantIDs(running); !slices.Equal(got, want) {
		t.Fatalf("Jobs(state running) = %v\nwant %v", got, want)
	}
	q.Before, q.Limit = running[0].ID, 2
	if got, want := list(q), wantIDs(running[1:3]); !slices.Equal(got, want) {
		t.Fatalf("Jobs(state running, before, limit 2) = %v\nwant %v", got, want)
	}

	jobs, err := s.Jobs(ctx, storage.JobQuery{ClientID: alice, Limit: 1})
	if err != nil {
		t.Fatalf("Jobs: %v", err)
	}
	if len(jobs) != 1 {
		t.Fatalf("Jobs(limit 1) = %d jobs", len(jobs))
	}
	assertJob(t, jobs[0], newestFirst[0])

	if got := list(storage.JobQuery{ClientID: bob}); len(got) != 4 {
		t.Fatalf("Jobs(bob) = %d jobs, want 4", len(got))
	}
	if got := list(storage.JobQuery{ClientID: newClient()}); len(got) != 0 {
		t.Fatalf("Jobs(new client) = %v, want none", got)
	}
	if _, err := s.Jobs(ctx, storage.JobQuery{}); err == nil {
		t.Fatal("Jobs without client id: nil error, want an error")
	}
}
