package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/valyala/fasthttp"
)

// Error is the API's error object: {"error": {"code", "message", "details"}}
// sent with Status.
type Error struct {
	Status  int            `json:"-"`
	Code    string         `json:"code"`
	Message string         `json:"message"`
	Details map[string]any `json:"details,omitempty"`
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

// FieldError names one invalid field of a request.
type FieldError struct {
	Field   string `json:"field"`
	Message string `json:"message"`
}

func errBadJSON(err error) *Error {
	return &Error{Status: http.StatusBadRequest, Code: "invalid_json", Message: "request body is not valid JSON: " + err.Error()}
}

func errInvalid(msg string, fields []FieldError) *Error {
	e := &Error{Status: http.StatusUnprocessableEntity, Code: "invalid_request", Message: msg}
	if len(fields) > 0 {
		e.Details = map[string]any{"errors": fields}
	}
	return e
}

func errUnauthorized(msg string) *Error {
	return &Error{Status: http.StatusUnauthorized, Code: "unauthorized", Message: msg}
}

func errNotFound(what string) *Error {
	return &Error{Status: http.StatusNotFound, Code: "not_found", Message: what + " not found"}
}

func errConflict(msg string) *Error {
	return &Error{Status: http.StatusConflict, Code: "conflict", Message: msg}
}

func errInternal() *Error {
	return &Error{Status: http.StatusInternalServerError, Code: "internal", Message: "internal error; the server log has details"}
}

func errUnavailable(msg string) *Error {
	return &Error{Status: http.StatusServiceUnavailable, Code: "unavailable", Message: msg}
}

// writeError sends err as the error object. Errors that are not *Error are
// internal: their text goes to the log, never to the client.
func (s *Server) writeError(ctx *fasthttp.RequestCtx, err error) {
	var e *Error
	if !errors.As(err, &e) {
		s.log.Error().Err(err).Str("path", string(ctx.Path())).Msg("request failed")
		e = errInternal()
	}
	writeJSON(ctx, e.Status, map[string]any{"error": e})
}

func writeJSON(ctx *fasthttp.RequestCtx, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		b = []byte(`{"error":{"code":"internal","message":"cannot encode response"}}`)
	}
	ctx.SetStatusCode(status)
	ctx.SetContentType("application/json")
	ctx.SetBody(append(b, '\n'))
}
