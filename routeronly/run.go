package routeronly

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/router"
)

// Process is one router-only process: the router, its two listeners and
// the follower that keeps its backends current. Start binds and returns;
// Wait blocks until the context given to Start ends and everything has
// stopped. Ready and Alive are for systemd (Type=notify, watchdog).
type Process struct {
	cfg     *Config
	log     *slog.Logger
	rt      *router.Router
	serving sync.WaitGroup
	done    chan struct{}
	ready   atomic.Bool
	// turned is when the follower's loop last turned (unix nanos).
	turned atomic.Int64
}

// Start binds router.listen:port and :read_only_port and starts routing.
// Until an agent answers, the router has no backends: a client waits up
// to primary_wait and gets "no primary available".
func Start(ctx context.Context, cfg *Config, log *slog.Logger) (*Process, error) {
	rc, err := cfg.Router.InForce(0, nil) // the file's settings until an agent answers
	if err != nil {
		return nil, err
	}
	rc.Logger = log.With("component", "router")
	set := router.NewBackendSet()
	rt, err := router.New(rc, set)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	p := &Process{cfg: cfg, log: log, rt: rt, done: make(chan struct{})}
	var lns []net.Listener
	for _, port := range []int{cfg.Router.Port, cfg.Router.ReadOnlyPort} {
		ln, err := net.Listen("tcp", net.JoinHostPort(cfg.Router.Listen, strconv.Itoa(port)))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			rt.Close()
			return nil, fmt.Errorf("router: %w", err)
		}
		lns = append(lns, ln)
	}
	for i, role := range []router.Role{router.ReadWrite, router.ReadOnly} {
		p.serving.Add(1)
		go func() {
			defer p.serving.Done()
			if err := rt.Serve(ctx, lns[i], role); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Error("router listener stopped", "role", role.String(), "err", err)
			}
		}()
	}
	agents := make([]string, len(cfg.Agents))
	for i, u := range cfg.Agents {
		agents[i] = strings.TrimRight(u, "/")
	}
	f := NewFollower(agents, cfg.httpClient(), set, p.applySettings, log)
	f.turned = func() { p.turned.Store(time.Now().UnixNano()) }
	p.serving.Add(1)
	go func() {
		defer p.serving.Done()
		f.Run(ctx)
	}()
	go func() {
		<-ctx.Done()
		rt.Close()
		p.serving.Wait()
		close(p.done)
	}()
	p.ready.Store(true)
	log.Info("router-only process serving", "read_write", lns[0].Addr().String(), "read_only", lns[1].Addr().String(), "agents", len(agents))
	return p, nil
}

// Wait blocks until the process has stopped.
func (p *Process) Wait() { <-p.done }

// Router is the router this process serves (SHOW POOL_NODES, metrics).
func (p *Process) Router() *router.Router { return p.rt }

// Ready: both listeners are bound.
func (p *Process) Ready() bool { return p.ready.Load() }

// Alive: the follower's loop turned within the last few seconds (it turns
// at least at every answer and every expiry; with the agents unreachable
// it still turns on its idle timer).
func (p *Process) Alive() bool {
	return time.Since(time.Unix(0, p.turned.Load())) < aliveWithin
}

const aliveWithin = 10 * time.Second

// applySettings gives the router the cluster-wide router settings of a
// new configuration version, merged over this file's as the leader's
// router does (agent.RouterConfig.InForce). Settings that do not fit are
// logged and the previous ones kept.
func (p *Process) applySettings(t agent.RouterTopology) {
	rc, err := p.cfg.Router.InForce(t.ConfigVersion, t.Router)
	if err != nil {
		p.log.Error("router: cannot apply the cluster-wide settings; keeping the previous ones", "version", t.ConfigVersion, "err", err)
		return
	}
	if err := p.rt.Reconfigure(rc); err != nil {
		p.log.Error("router: cannot apply the cluster-wide settings; keeping the previous ones", "version", t.ConfigVersion, "err", err)
		return
	}
	p.log.Info("router settings applied", "version", t.ConfigVersion, "pool_mode", rc.PoolMode, "pool_size", rc.PoolSize)
}

// httpClient calls the agents with the cluster CA, the client
// certificate if any, and the token if any. It follows no redirect: one
// could carry the token to an address that is not an agent.
func (c *Config) httpClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	if c.clientTLS != nil {
		tr.TLSClientConfig = c.clientTLS.Clone()
	}
	return &http.Client{
		Transport: bearer{base: tr, token: c.token},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return errors.New("the agents' API does not redirect; refusing to follow")
		},
	}
}

// bearer adds the API token to each request (none without one).
type bearer struct {
	base  http.RoundTripper
	token string
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	if b.token == "" {
		return b.base.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}
