package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"net/http"
	"strings"

	"github.com/valyala/fasthttp"

	"trawl/storage"
	"trawl/stream"
)

// route is one line of the explicit route table. Segments in braces are
// parameters, handed to the handler in order.
type route struct {
	method  string
	path    []string
	auth    bool
	handler func(rc context.Context, ctx *fasthttp.RequestCtx, clientID string, params []string) error
}

func (s *Server) routeTable() []route {
	r := func(method, path string, auth bool, h func(context.Context, *fasthttp.RequestCtx, string, []string) error) route {
		return route{method: method, path: strings.Split(strings.Trim(path, "/"), "/"), auth: auth, handler: h}
	}
	return []route{
		r("GET", "/health", false, s.health),
		// BinaryEdge's seed calls /v1/login with curl and no body (a GET); POST is accepted too.
		r("GET", "/v1/login", false, s.login),
		r("POST", "/v1/login", false, s.login),
		r("POST", "/v1/tasks", true, s.createTask),
		r("GET", "/v1/tasks", true, s.listTasks),
		r("GET", "/v1/tasks/{id}", true, s.getTask),
		r("POST", "/v1/tasks/{id}/cancel", true, s.cancelTask),
		r("GET", "/v1/tasks/{id}/results", true, s.taskResults),
		r("GET", "/v1/tasks/{id}/screenshots/{name}", true, s.screenshot),
		r("GET", "/v1/tasks/{id}/analytics/ports", true, s.ports),
		r("GET", "/v1/tasks/{id}/analytics/products", true, s.products),
		r("GET", "/v1/tasks/{id}/analytics/hosts", true, s.taskHosts),
		r("GET", "/v1/analytics/top-ports", true, s.ports),
		r("GET", "/v1/analytics/top-products", true, s.products),
		r("GET", "/v1/analytics/ips/{ip}/history", true, s.ipHistory),
	}
}

// Handler dispatches a request through the route table.
func (s *Server) Handler(ctx *fasthttp.RequestCtx) {
	path := strings.Split(strings.Trim(string(ctx.Path()), "/"), "/")
	method := string(ctx.Method())
	pathMatched := false
	for _, rt := range s.routes {
		params, ok := matchPath(rt.path, path)
		if !ok {
			continue
		}
		pathMatched = true
		if rt.method != method {
			continue
		}
		// fasthttp's RequestCtx is not safe to use as a context.Context
		// across its server's shutdown; handlers get their own.
		rc, cancel := context.WithTimeout(context.Background(), s.cfg.RequestTimeout)
		defer cancel()
		var clientID string
		if rt.auth {
			id, err := s.authenticate(rc, ctx)
			if err != nil {
				s.writeError(ctx, err)
				return
			}
			clientID = id
		}
		if err := rt.handler(rc, ctx, clientID, params); err != nil {
			s.writeError(ctx, err)
		}
		return
	}
	if pathMatched {
		s.writeError(ctx, &Error{Status: http.StatusMethodNotAllowed, Code: "method_not_allowed", Message: method + " is not allowed on " + string(ctx.Path())})
		return
	}
	s.writeError(ctx, errNotFound("route "+string(ctx.Path())))
}

func matchPath(pattern, path []string) ([]string, bool) {
	if len(pattern) != len(path) {
		return nil, false
	}
	var params []string
	for i, seg := range pattern {
		if strings.HasPrefix(seg, "{") {
			if path[i] == "" {
				return nil, false
			}
			params = append(params, path[i])
			continue
		}
		if seg != path[i] {
			return nil, false
		}
	}
	return params, true
}

// authenticate accepts the client token as X-Token (BinaryEdge),
// Authorization: Bearer, or X-API-Key.
func (s *Server) authenticate(rc context.Context, ctx *fasthttp.RequestCtx) (string, error) {
	token := string(ctx.Request.Header.Peek("X-Token"))
	if token == "" {
		if auth := string(ctx.Request.Header.Peek("Authorization")); auth != "" {
			var ok bool
			if token, ok = strings.CutPrefix(auth, "Bearer "); !ok {
				return "", errUnauthorized("Authorization must be 'Bearer <token>'")
			}
		}
	}
	if token == "" {
		token = string(ctx.Request.Header.Peek("X-API-Key"))
	}
	if token == "" {
		return "", errUnauthorized("missing credentials: send X-Token (from /v1/login), Authorization: Bearer or X-API-Key")
	}
	clientID, err := s.deps.Tokens.Verify(token)
	if err != nil {
		return "", errUnauthorized("invalid or expired token; log in again at /v1/login")
	}
	// tokens are signed, not stored: a deleted account's token is refused here
	if _, err := s.deps.Store.User(rc, clientID); errors.Is(err, storage.ErrNotFound) {
		return "", errUnauthorized("the account of this token no longer exists")
	} else if err != nil {
		return "", err
	}
	return clientID, nil
}

func (s *Server) health(rc context.Context, ctx *fasthttp.RequestCtx, _ string, _ []string) error {
	writeJSON(ctx, http.StatusOK, map[string]any{"status": "ok"})
	return nil
}

// login exchanges an operator-created app id / user id pair for a client token.
func (s *Server) login(rc context.Context, ctx *fasthttp.RequestCtx, _ string, _ []string) error {
	appID := strings.TrimSpace(string(ctx.Request.Header.Peek("X-APP-ID")))
	secret := strings.TrimSpace(string(ctx.Request.Header.Peek("X-USER-ID")))
	if appID == "" || secret == "" {
		return errUnauthorized("send both X-APP-ID and X-USER-ID (an operator creates them with 'trawl user add')")
	}
	u, err := s.deps.Store.UserByAppID(rc, appID)
	if errors.Is(err, storage.ErrNotFound) {
		return errUnauthorized("unknown X-APP-ID / X-USER-ID pair")
	}
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare([]byte(HashSecret(secret)), []byte(u.SecretHash)) != 1 {
		return errUnauthorized("unknown X-APP-ID / X-USER-ID pair")
	}
	writeJSON(ctx, http.StatusOK, map[string]string{
		"client_token": s.deps.Tokens.Issue(u.ID),
		"stream_url":   stream.UserStreamURL(s.cfg.StreamURL),
	})
	return nil
}

// HashSecret is how a user id secret is kept: hex sha256.
func HashSecret(secret string) string { return sha256Hex([]byte(secret)) }

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
