package api

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/valyala/fasthttp"

	"trawl/engine"
	"trawl/ingest"
	"trawl/storage"
	"trawl/stream"
)

// taskRequest is BinaryEdge's task payload; rate is trawl's addition.
type taskRequest struct {
	Type        string           `json:"type"`
	Description string           `json:"description"`
	Options     []optionsRequest `json:"options"`
	Rate        int              `json:"rate,omitempty"`
}

type optionsRequest struct {
	Targets []string      `json:"targets"`
	Ports   []portRequest `json:"ports"`
}

// portRequest takes both "modules": [...] and the FAQ's "module": "name";
// port is a number or a "first-last" range.
type portRequest struct {
	Port    json.RawMessage `json:"port"`
	Sample  int             `json:"sample,omitempty"`
	Modules []string        `json:"modules,omitempty"`
	Module  string          `json:"module,omitempty"`
}

// jobView is a job as the API shows it.
type jobView struct {
	storage.Job
	StreamURL string `json:"stream_url"`
}

func (s *Server) view(j storage.Job) jobView {
	return jobView{Job: j, StreamURL: stream.JobStreamURL(s.cfg.StreamURL, j.ID)}
}

func (s *Server) createTask(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, _ []string) error {
	body := ctx.PostBody()
	var req taskRequest
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return errBadJSON(err)
		case errors.As(err, &typ):
			return errInvalid("a field has the wrong type", []FieldError{{Field: typ.Field, Message: "expected " + typ.Type.String() + ", got " + typ.Value}})
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			return errInvalid("unknown field in request", []FieldError{{Field: strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`), Message: "not a task field"}})
		default:
			return errBadJSON(err)
		}
	}
	if dec.More() {
		return errBadJSON(errors.New("trailing data after the JSON object"))
	}
	task, err := s.buildTask(rc, clientID, req)
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	job := storage.Job{
		ID: task.JobID, ClientID: clientID, Type: task.Type, Description: req.Description,
		State: ingest.StateQueued, Request: json.RawMessage(body), Created: now, Updated: now,
	}
	if !json.Valid(job.Request) {
		job.Request = nil
	}
	if err := s.deps.Store.CreateJob(rc, job); err != nil {
		return fmt.Errorf("cannot create job: %w", err)
	}
	msg, err := ingest.Encode(nil, &task)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(rc, 10*time.Second)
	defer cancel()
	if err := s.deps.Bus.Publish(pctx, ingest.TopicTasks, ingest.Message{Key: []byte(task.JobID), Value: msg}); err != nil {
		// the job was recorded but never handed to a scanner: say so on the job
		job.State, job.Error, job.Finished, job.Updated = ingest.StateFailed, "cannot queue the job: "+err.Error(), time.Now().UTC(), time.Now().UTC()
		if uerr := s.deps.Store.UpdateJob(context.WithoutCancel(rc), job); uerr != nil {
			s.log.Error().Err(uerr).Str("job_id", job.ID).Msg("cannot mark unqueued job failed")
		}
		s.log.Error().Err(err).Str("job_id", job.ID).Msg("cannot publish task")
		// A timed-out publish may still have reached the broker: tell the
		// scanners to drop the job, so a job marked failed never runs.
		if cmsg, cerr := ingest.Encode(nil, &ingest.Task{Kind: ingest.TaskCancel, JobID: job.ID, ClientID: clientID}); cerr == nil {
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(rc), 5*time.Second)
			_ = s.deps.Bus.Publish(cctx, ingest.TopicTasks, ingest.Message{Key: []byte(job.ID), Value: cmsg})
			ccancel()
		}
		return errUnavailable("the task queue is not accepting work; try again")
	}
	s.log.Info().Str("job_id", job.ID).Str("client_id", clientID).Str("type", task.Type).Msg("job queued")
	writeJSON(ctx, http.StatusOK, map[string]string{"stream_url": stream.JobStreamURL(s.cfg.StreamURL, job.ID), "job_id": job.ID})
	return nil
}

// buildTask validates a request field by field, resolves hostnames once, and
// checks the whole target space against the scan policy. Every problem is
// reported at once.
func (s *Server) buildTask(ctx context.Context, clientID string, req taskRequest) (ingest.Task, error) {
	var fields []FieldError
	bad := func(field, format string, args ...any) {
		fields = append(fields, FieldError{Field: field, Message: fmt.Sprintf(format, args...)})
	}
	if req.Type == "" {
		req.Type = ingest.JobScan
	}
	if req.Type != ingest.JobScan && req.Type != ingest.JobGrab {
		bad("type", "must be %q or %q", ingest.JobScan, ingest.JobGrab)
	}
	if len(req.Options) == 0 {
		bad("options", "at least one options block with targets and ports is required")
	}
	rate := req.Rate
	switch {
	case rate == 0:
		rate = s.cfg.DefaultRate
	case rate < 0 || rate > s.cfg.MaxRate:
		bad("rate", "must be between 1 and %d probes per second", s.cfg.MaxRate)
	}
	task := ingest.Task{
		Kind: ingest.TaskStart, JobID: ingest.NewID("job_"), ClientID: clientID, Type: req.Type,
		Description: req.Description, Shards: s.cfg.Shards, Rate: rate, Seed: randomSeed(),
	}
	rctx, cancel := context.WithTimeout(ctx, s.cfg.ResolveWait)
	defer cancel()
	for i, o := range req.Options {
		at := fmt.Sprintf("options[%d]", i)
		if len(o.Targets) == 0 {
			bad(at+".targets", "at least one target (CIDR, address, range or hostname) is required")
		}
		if len(o.Ports) == 0 {
			bad(at+".ports", "at least one port entry is required")
		}
		var opt ingest.TaskOptions
		for j, t := range o.Targets {
			resolved, names, err := engine.ResolveTargets(rctx, s.deps.Resolver, []string{strings.TrimSpace(t)})
			if err != nil {
				bad(fmt.Sprintf("%s.targets[%d]", at, j), "%v", err)
				continue
			}
			if _, err := engine.ParseTargets(resolved); err != nil {
				bad(fmt.Sprintf("%s.targets[%d]", at, j), "%v", err)
				continue
			}
			opt.Targets = append(opt.Targets, resolved...)
			for addr, name := range names {
				if _, seen := opt.Hostnames[addr]; !seen {
					if opt.Hostnames == nil {
						opt.Hostnames = map[string]string{}
					}
					opt.Hostnames[addr] = name
				}
			}
		}
		for k, p := range o.Ports {
			field := fmt.Sprintf("%s.ports[%d]", at, k)
			spec, errs := s.portSpec(p, req.Type)
			for _, e := range errs {
				bad(field, "%s", e)
			}
			opt.Ports = append(opt.Ports, spec)
		}
		task.Options = append(task.Options, opt)
	}
	if len(fields) > 0 {
		return task, errInvalid("the task is not valid", fields)
	}
	if _, err := engine.NewSpace(task.Options, s.deps.Policy); err != nil {
		if errors.Is(err, engine.ErrOutsidePolicy) {
			return task, &Error{Status: http.StatusUnprocessableEntity, Code: "target_not_allowed",
				Message: "targets are outside the scan policy: " + err.Error()}
		}
		return task, errInvalid(err.Error(), nil)
	}
	return task, nil
}

func (s *Server) portSpec(p portRequest, jobType string) (ingest.PortSpec, []string) {
	var errs []string
	spec := ingest.PortSpec{Sample: p.Sample}
	raw := strings.TrimSpace(string(p.Port))
	switch {
	case raw == "" || raw == "null":
		errs = append(errs, "port is required (a number, or a range such as \"8000-8100\")")
	default:
		text := raw
		if strings.HasPrefix(raw, `"`) {
			if err := json.Unmarshal(p.Port, &text); err != nil {
				errs = append(errs, "port must be a number or a \"first-last\" range")
				break
			}
		}
		if _, err := engine.ParsePorts(text); err != nil {
			errs = append(errs, err.Error())
		}
		spec.Ports = text
	}
	if p.Sample < 0 {
		errs = append(errs, "sample must be zero (no limit) or positive")
	}
	seen := map[string]bool{}
	for _, m := range append(append([]string(nil), p.Modules...), p.Module) {
		m = strings.TrimSpace(m)
		if m == "" || seen[m] {
			continue
		}
		seen[m] = true
		if !s.modules[m] {
			errs = append(errs, fmt.Sprintf("unknown module %q (known: %s)", m, strings.Join(s.moduleNames(), ", ")))
			continue
		}
		spec.Modules = append(spec.Modules, m)
	}
	if jobType == ingest.JobGrab && len(spec.Modules) == 0 {
		errs = append(errs, "a grab job needs at least one module per port entry")
	}
	return spec, errs
}

func (s *Server) moduleNames() []string {
	names := make([]string, 0, len(s.modules))
	for m := range s.modules {
		names = append(names, m)
	}
	sort.Strings(names)
	return names
}

func randomSeed() uint64 {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return binary.LittleEndian.Uint64(b[:])
}

// ownJob loads a job of clientID; another user's job is reported as not found.
func (s *Server) ownJob(ctx context.Context, clientID, id string) (storage.Job, error) {
	j, err := s.deps.Store.Job(ctx, id)
	if errors.Is(err, storage.ErrNotFound) || (err == nil && j.ClientID != clientID) {
		return j, errNotFound("job " + id)
	}
	return j, err
}

func (s *Server) getTask(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, params []string) error {
	j, err := s.ownJob(rc, clientID, params[0])
	if err != nil {
		return err
	}
	writeJSON(ctx, http.StatusOK, s.view(j))
	return nil
}

func (s *Server) listTasks(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, _ []string) error {
	limit, err := queryLimit(ctx, 100, 1000)
	if err != nil {
		return err
	}
	state := string(ctx.QueryArgs().Peek("state"))
	if state != "" && state != ingest.StateQueued && state != ingest.StateRunning && !ingest.Terminal(state) {
		return errInvalid("unknown state filter", []FieldError{{Field: "state", Message: "one of queued, running, succeeded, failed, canceled"}})
	}
	jobs, err := s.deps.Store.Jobs(rc, storage.JobQuery{ClientID: clientID, Before: string(ctx.QueryArgs().Peek("cursor")), Limit: limit, State: state})
	if err != nil {
		return err
	}
	data := make([]jobView, 0, len(jobs))
	for _, j := range jobs {
		data = append(data, s.view(j))
	}
	next := ""
	if len(jobs) == limit {
		next = jobs[len(jobs)-1].ID
	}
	writeJSON(ctx, http.StatusOK, map[string]any{"data": data, "next_cursor": next})
	return nil
}

// cancelTask asks every scanner shard and worker to stop the job; the job
// tracker publishes the terminal canceled status.
func (s *Server) cancelTask(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, params []string) error {
	j, err := s.ownJob(rc, clientID, params[0])
	if err != nil {
		return err
	}
	if ingest.Terminal(j.State) {
		return errConflict("job " + j.ID + " has already " + j.State)
	}
	task := ingest.Task{Kind: ingest.TaskCancel, JobID: j.ID, ClientID: clientID}
	msg, err := ingest.Encode(nil, &task)
	if err != nil {
		return err
	}
	if err := s.deps.Bus.Publish(rc, ingest.TopicTasks, ingest.Message{Key: []byte(j.ID), Value: msg}); err != nil {
		s.log.Error().Err(err).Str("job_id", j.ID).Msg("cannot publish cancel")
		return errUnavailable("cannot reach the task queue; try again")
	}
	writeJSON(ctx, http.StatusAccepted, map[string]any{"job_id": j.ID, "state": j.State, "cancel_requested": true})
	return nil
}

func (s *Server) taskResults(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, params []string) error {
	j, err := s.ownJob(rc, clientID, params[0])
	if err != nil {
		return err
	}
	limit, err := queryLimit(ctx, 100, 10000)
	if err != nil {
		return err
	}
	events, err := s.deps.Results.Events(rc, storage.EventQuery{ClientID: clientID, JobID: j.ID, After: string(ctx.QueryArgs().Peek("cursor")), Limit: limit, ResultsOnly: true})
	if err != nil {
		return err
	}
	next := ""
	if len(events) == limit {
		next = events[len(events)-1].ID
	}
	if events == nil {
		events = []ingest.Event{}
	}
	writeJSON(ctx, http.StatusOK, map[string]any{"data": events, "next_cursor": next, "job_state": j.State})
	return nil
}

func queryLimit(ctx *fasthttp.RequestCtx, def, max int) (int, error) {
	raw := string(ctx.QueryArgs().Peek("limit"))
	if raw == "" {
		return def, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < 1 || n > max {
		return 0, errInvalid("bad limit", []FieldError{{Field: "limit", Message: fmt.Sprintf("must be an integer from 1 to %d", max)}})
	}
	return n, nil
}
