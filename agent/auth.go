package agent

import (
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/pgha/pgha/pki"
)

// Who may call what on the REST API:
//
//  1. Health checks (/primary, /replica, /health, ...), /cluster,
//     /metrics and the status page (/, /status): anyone, so load
//     balancers and monitoring need no secret. With tls set, everything
//     but the health checks needs a cluster certificate or the token
//     (readsClusterState).
//  2. /internal/*: with tls set, only a client whose certificate the
//     cluster CA signed, i.e. another agent; anyone else gets 403.
//  3. State-changing calls (the operator's control calls and the agents'
//     own POSTs): a client certificate from the cluster CA, or
//     "Authorization: Bearer <api token>". No credentials: 401 with
//     WWW-Authenticate; wrong ones: 403. The call then changes nothing.
//
// With neither tls nor a token configured, 2 and 3 are open, as in a demo;
// the agent says so when it starts.

// authConfigured reports whether state-changing calls need credentials.
func (a *Agent) authConfigured() bool { return a.cfg.API.Token() != "" || a.cfg.TLS.Enabled() }

// verifiedPeer is the name in the client certificate of r, if the client
// presented one that the cluster CA signed ("" otherwise).
func verifiedPeer(r *http.Request) string {
	if r.TLS == nil {
		return ""
	}
	return pki.PeerName(*r.TLS)
}

// guardInternal enforces rule 2 for every path below /internal/, so an
// internal endpoint added later cannot be left open by mistake.
func (a *Agent) guardInternal(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a.cfg.TLS.Enabled() && strings.HasPrefix(r.URL.Path, "/internal/") && verifiedPeer(r) == "" {
			writeJSON(w, http.StatusForbidden, apiError{Error: "internal endpoints are for the agents: a client certificate from the cluster CA is required"})
			return
		}
		// With TLS the cluster's state (members, addresses, roles, LSNs) is
		// for holders of a cluster certificate or the token, not for anyone
		// who can reach the port; the health checks stay open.
		if a.cfg.TLS.Enabled() && readsClusterState(r.URL.Path) {
			a.authorized(next.ServeHTTP)(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// readsClusterState: the path shows the cluster's state, so with TLS it
// is for holders of a cluster certificate or the token. The status page
// (exactly "/", its files, the JSON it polls) shows what /cluster shows
// and more, so it is readable where /cluster is.
func readsClusterState(path string) bool {
	switch path {
	case "/cluster", "/history", "/config", "/metrics", "/", "/status":
		return true
	}
	return strings.HasPrefix(path, "/ui/")
}

// authorized enforces rule 3 around a state-changing handler. It runs
// before the handler reads the body or forwards the call to the leader.
func (a *Agent) authorized(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.authConfigured() || verifiedPeer(r) != "" {
			h(w, r)
			return
		}
		auth := r.Header.Get("Authorization")
		if auth == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="pgha"`)
			writeJSON(w, http.StatusUnauthorized, apiError{Error: "authentication required: send the API token (Authorization: Bearer ..., pgha-agent --token-file) or a client certificate from the cluster CA"})
			return
		}
		scheme, token, _ := strings.Cut(auth, " ")
		if !strings.EqualFold(scheme, "Bearer") || !a.tokenMatches(strings.TrimSpace(token)) {
			// The remote address helps find a misconfigured client; what
			// it sent is never logged.
			a.log.Warn("refused a state-changing call: wrong credentials", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			writeJSON(w, http.StatusForbidden, apiError{Error: "the API token is not valid"})
			return
		}
		h(w, r)
	}
}

// tokenMatches compares in constant time. Hashing first makes the time
// independent of the lengths too.
func (a *Agent) tokenMatches(got string) bool {
	want := a.cfg.API.Token()
	if want == "" || got == "" {
		return false
	}
	g, w := sha256.Sum256([]byte(got)), sha256.Sum256([]byte(want))
	return subtle.ConstantTimeCompare(g[:], w[:]) == 1
}

// logAPISecurity says at start what protects the API, once.
func (a *Agent) logAPISecurity() {
	switch {
	case !a.authConfigured():
		a.log.Warn("control endpoints are UNAUTHENTICATED: anyone who can reach the REST API can switch over, fail over, pause, reinit or remove members; set api.auth_token_file and/or tls", "api", a.cfg.API.Listen)
	case !a.cfg.TLS.Enabled():
		a.log.Info("control endpoints need the API token; the REST API is plain HTTP, so the token crosses the network in clear text: set tls to encrypt it", "api", a.cfg.API.Listen)
	default:
		a.log.Info("REST API over TLS; internal endpoints need a certificate from the cluster CA, control endpoints a certificate or the API token", "api", a.cfg.API.Listen)
	}
}

// newAPIClient is the client the agent calls other members with: it
// presents this node's certificate when tls is set and sends the API
// token when one is configured, so the members accept its state-changing
// calls.
func newAPIClient(cfg *Config, timeout time.Duration) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.TLS.client != nil {
		tr.TLSClientConfig = cfg.TLS.client.Clone()
	}
	return &http.Client{
		Timeout:   timeout,
		Transport: tokenTransport{base: tr, token: cfg.API.Token()},
		// A redirect could carry the token to an address that is not a member.
		CheckRedirect: func(*http.Request, []*http.Request) error { return errNoRedirects },
	}
}

var errNoRedirects = errors.New("the agents' API does not redirect; refusing to follow")

// tokenTransport adds the bearer token to requests that carry no
// Authorization of their own.
type tokenTransport struct {
	base  http.RoundTripper
	token string
}

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if t.token == "" || r.Header.Get("Authorization") != "" {
		return t.base.RoundTrip(r)
	}
	r = r.Clone(r.Context()) // a RoundTripper must not modify the caller's request
	r.Header.Set("Authorization", "Bearer "+t.token)
	return t.base.RoundTrip(r)
}

// apiServer is the REST API's server: HTTPS with this node's certificate
// when tls is set. A client certificate is verified when given but not
// required, because load balancers' health checks carry none; the
// handlers decide what a client without one may do (guardInternal,
// authorized).
func (a *Agent) apiServer() *http.Server {
	srv := &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: 5 * time.Second,
		// Failed handshakes (a client of another CA) go to the agent's log.
		ErrorLog: slog.NewLogLogger(a.log.Handler(), slog.LevelWarn),
	}
	if a.cfg.TLS.server != nil {
		tc := a.cfg.TLS.server.Clone() // Raft keeps requiring certificates
		tc.ClientAuth = tls.VerifyClientCertIfGiven
		srv.TLSConfig = tc
	}
	return srv
}
