package netcluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/internal/localcluster"
	"github.com/pgha/pgha/internal/wait"
)

// View is GET /cluster as the majority sees it: asked from the client
// namespace (a host cut off from the others is unreachable from there too),
// of the Raft leader if the first agent that answers names a reachable one.
func (c *Cluster) View(ctx context.Context) (agent.ClusterView, error) {
	var errs []error
	for _, h := range c.Hosts {
		v, err := localcluster.FetchViewWith(ctx, c.clientHTTP, h.APIURL)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.Name, err))
			continue
		}
		if l := c.Host(v.RaftLeader); l != nil && l != h {
			if lv, err := localcluster.FetchViewWith(ctx, c.clientHTTP, l.APIURL); err == nil {
				return lv, nil
			}
		}
		return v, nil
	}
	return agent.ClusterView{}, fmt.Errorf("no agent answers /cluster from the client namespace: %w", errors.Join(errs...))
}

// ViewFrom is GET /cluster of h's agent, asked from inside h's namespace:
// what that host believes, even while it is cut off.
func (c *Cluster) ViewFrom(ctx context.Context, h *Host) (agent.ClusterView, error) {
	return localcluster.FetchViewWith(ctx, c.hostsHTTP[h.Name], h.APIURL)
}

// Switchover asks the cluster (any reachable agent, from the client
// namespace; it forwards to the Raft leader) to make candidate the primary,
// authenticating with the API token, and waits for the answer.
func (c *Cluster) Switchover(ctx context.Context, candidate string) (agent.ControlResult, error) {
	return c.control(ctx, c.Hosts, "/switchover", agent.ControlRequest{Candidate: candidate})
}

// Failover is the operator's forced failover (POST /failover, what
// `pgha-agent failover` sends) to candidate ("": the leader chooses), asked
// as Switchover is. The agent refuses it (409) while it sees a healthy
// primary. via are the agents to ask, in order (default: every host); a
// frozen agent accepts the connection and never answers, so a caller that
// froze one leaves it out.
func (c *Cluster) Failover(ctx context.Context, candidate string, via ...*Host) (agent.ControlResult, error) {
	if len(via) == 0 {
		via = c.Hosts
	}
	return c.control(ctx, via, "/failover", agent.ControlRequest{Candidate: candidate})
}

// control POSTs a control request to the first of hosts whose agent answers.
func (c *Cluster) control(ctx context.Context, hosts []*Host, path string, r agent.ControlRequest) (agent.ControlResult, error) {
	var res agent.ControlResult
	body, _ := json.Marshal(r)
	client := &http.Client{Transport: c.clientHTTP.Transport, Timeout: 45 * time.Second}
	var errs []error
	for _, h := range hosts {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.APIURL+path, bytes.NewReader(body))
		if err != nil {
			return res, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := client.Do(req)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.Name, err))
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return res, fmt.Errorf("POST %s%s: %s: %s", h.APIURL, path, resp.Status, bytes.TrimSpace(b))
		}
		if err := json.Unmarshal(b, &res); err != nil {
			return res, fmt.Errorf("POST %s%s: %w: %s", h.APIURL, path, err, b)
		}
		return res, nil
	}
	return res, fmt.Errorf("POST %s: no agent answered: %w", path, errors.Join(errs...))
}

// Healthy reports whether v shows every one of members members: one running
// primary, every other member streaming on the primary's timeline (a
// standby that cannot follow the primary's new timeline reconnects and
// shows "streaming" between its failed attempts), and a Raft leader.
func Healthy(v agent.ClusterView, members int) bool {
	if len(v.Members) != members || v.RaftLeader == "" {
		return false
	}
	var timeline uint32
	for _, m := range v.Members {
		if m.Role == "leader" {
			timeline = m.Timeline
		}
	}
	primaries, streaming := 0, 0
	for _, m := range v.Members {
		switch {
		case m.Role == "leader" && m.State == "running":
			primaries++
		case m.Role != "leader" && m.State == "streaming" && m.Timeline == timeline:
			streaming++
		}
	}
	return primaries == 1 && streaming == members-1
}

// Primary is the member v names primary ("" if none).
func Primary(v agent.ClusterView) string {
	for _, m := range v.Members {
		if m.Role == "leader" {
			return m.Name
		}
	}
	return ""
}

// Member is v's entry for name (zero if absent).
func Member(v agent.ClusterView, name string) agent.MemberStatus {
	for _, m := range v.Members {
		if m.Name == name {
			return m
		}
	}
	return agent.MemberStatus{}
}

// Describe is a one-line summary of a view for logs and failure messages.
func Describe(v agent.ClusterView) string {
	var parts []string
	for _, m := range v.Members {
		s := fmt.Sprintf("%s=%s/%s", m.Name, m.Role, m.State)
		if m.Timeline != 0 {
			s += fmt.Sprintf("@tl%d", m.Timeline)
		}
		if m.Problem != "" {
			s += "(" + m.Problem + ")"
		}
		parts = append(parts, s)
	}
	s := fmt.Sprintf("epoch %d leader %s [%s]", v.Epoch, v.RaftLeader, strings.Join(parts, " "))
	if v.Waiting != "" {
		s += " waiting: " + v.Waiting
	}
	return s
}

// AwaitHealthy polls until the majority's view shows one running primary
// and every other member streaming, every host's PostgreSQL agrees (exactly
// that primary accepts writes) and exactly the Raft leader holds the VIP.
func (c *Cluster) AwaitHealthy(ctx context.Context, timeout time.Duration) (agent.ClusterView, error) {
	var v agent.ClusterView
	err := wait.Until(ctx, timeout, func() (bool, string) {
		var err error
		v, err = c.View(ctx)
		if err != nil {
			return false, err.Error()
		}
		if !Healthy(v, len(c.Hosts)) {
			return false, Describe(v)
		}
		if ps := c.WritablePrimaries(ctx); len(ps) != 1 || ps[0] != Primary(v) {
			return false, fmt.Sprintf("%s; writable PostgreSQL: %v", Describe(v), ps)
		}
		if hs, err := c.VIPHolders(); err != nil || len(hs) != 1 || hs[0] != v.RaftLeader {
			return false, fmt.Sprintf("%s; VIP on %v (%v)", Describe(v), hs, err)
		}
		return true, ""
	})
	return v, err
}

// Config is GET /config, asked from the client namespace of the first
// agent that answers.
func (c *Cluster) Config(ctx context.Context) (agent.ConfigView, error) {
	var errs []error
	for _, h := range c.Hosts {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.APIURL+"/config", nil)
		if err != nil {
			return agent.ConfigView{}, err
		}
		resp, err := c.clientHTTP.Do(req)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.Name, err))
			continue
		}
		var v agent.ConfigView
		err = json.NewDecoder(resp.Body).Decode(&v)
		resp.Body.Close()
		if err == nil {
			return v, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", h.Name, err))
	}
	return agent.ConfigView{}, fmt.Errorf("GET /config: %w", errors.Join(errs...))
}

// SetFenceTimeout changes the cluster-wide timing.fence_timeout (PATCH
// /config, as `pgha-agent edit-config --set timing.fence_timeout=D` does)
// through the first agent that commits it: the Raft leader's (a follower
// refuses, not being the leader).
func (c *Cluster) SetFenceTimeout(ctx context.Context, d time.Duration) (agent.ConfigView, error) {
	body := []byte(fmt.Sprintf(`{"timing": {"fence_timeout": %q}}`, d.String()))
	client := &http.Client{Transport: c.clientHTTP.Transport, Timeout: 10 * time.Second}
	var errs []error
	for _, h := range c.Hosts {
		req, err := http.NewRequestWithContext(ctx, http.MethodPatch, h.APIURL+"/config", bytes.NewReader(body))
		if err != nil {
			return agent.ConfigView{}, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+c.token)
		resp, err := client.Do(req)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", h.Name, err))
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			errs = append(errs, fmt.Errorf("%s: %s: %s", h.Name, resp.Status, bytes.TrimSpace(b)))
			continue
		}
		var v agent.ConfigView
		if err := json.Unmarshal(b, &v); err != nil {
			return v, fmt.Errorf("PATCH /config on %s: %w: %s", h.Name, err, b)
		}
		return v, nil
	}
	return agent.ConfigView{}, fmt.Errorf("PATCH /config: no agent committed it: %w", errors.Join(errs...))
}

// ReportedFenceTimeout is the fence_timeout h's agent says it uses (its
// observation's safety settings), asked from the client namespace.
func (c *Cluster) ReportedFenceTimeout(ctx context.Context, h *Host) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, h.APIURL+"/internal/observation", nil)
	if err != nil {
		return 0, err
	}
	resp, err := c.clientHTTP.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var o agent.Observation
	if err := json.NewDecoder(resp.Body).Decode(&o); err != nil {
		return 0, err
	}
	if o.Safety == nil {
		return 0, fmt.Errorf("%s reports no safety settings", h.Name)
	}
	return o.Safety.FenceTimeout, nil
}
