package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/pgha/pgha/agent"
	"github.com/pgha/pgha/pki"
)

// How the operator's commands reach the agents and prove who they are.
// Every flag has an environment default, so an operator sets them once:
//
//	PGHA_API         --api         agent URLs, comma-separated
//	PGHA_TOKEN_FILE  --token-file  the API token (mode 0600)
//	PGHA_CA          --ca          the cluster CA, to verify https:// agents
//	PGHA_CERT/KEY    --cert/--key  a certificate from the cluster CA, which
//	                               authorises control calls like the token

// apiFlags are the connection flags of one command.
type apiFlags struct {
	apis                     []string
	tokenFile, ca, cert, key string
}

// register adds the flags; control commands also get --token-file.
func (f *apiFlags) register(cmd *cobra.Command, control bool) {
	apis := defaultAPIs
	if env := os.Getenv("PGHA_API"); env != "" {
		apis = strings.Split(env, ",")
	}
	fl := cmd.Flags()
	fl.StringSliceVar(&f.apis, "api", apis, "agent REST URLs to ask, first that answers wins (env PGHA_API)")
	fl.StringVar(&f.ca, "ca", os.Getenv("PGHA_CA"), "cluster CA certificate to verify https:// agents with (env PGHA_CA)")
	fl.StringVar(&f.cert, "cert", os.Getenv("PGHA_CERT"), "client certificate from the cluster CA (env PGHA_CERT)")
	fl.StringVar(&f.key, "key", os.Getenv("PGHA_KEY"), "its private key, mode 0600 (env PGHA_KEY)")
	if control {
		fl.StringVar(&f.tokenFile, "token-file", os.Getenv("PGHA_TOKEN_FILE"), "file holding the API token, mode 0600 (env PGHA_TOKEN_FILE)")
	}
}

// apiClient calls the agents with the flags' credentials.
type apiClient struct {
	http  *http.Client
	token string
	apis  []string
}

func (f *apiFlags) client() (*apiClient, error) {
	c := &apiClient{apis: f.apis, http: &http.Client{
		// Never carry the token to wherever a redirect points.
		CheckRedirect: func(*http.Request, []*http.Request) error { return errors.New("the agents' API does not redirect") },
	}}
	if f.tokenFile != "" {
		tok, err := agent.ReadTokenFile("--token-file", f.tokenFile)
		if err != nil {
			return nil, err
		}
		c.token = tok
	}
	tc, err := f.tlsConfig()
	if err != nil {
		return nil, err
	}
	if tc != nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = tc
		c.http.Transport = tr
	}
	return c, nil
}

// tlsConfig is nil when no TLS flag is given (system roots for https).
func (f *apiFlags) tlsConfig() (*tls.Config, error) {
	switch {
	case (f.cert == "") != (f.key == ""):
		return nil, errors.New("--cert and --key go together")
	case f.cert != "" && f.ca == "":
		return nil, errors.New("--cert needs --ca, the cluster CA it was issued by")
	case f.cert != "":
		tc, err := pki.TLSFiles{CA: f.ca, Cert: f.cert, Key: f.key}.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("--cert: %w", err)
		}
		return tc, nil
	case f.ca != "":
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("--ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--ca: %s holds no PEM certificate", f.ca)
		}
		return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
	}
	return nil, nil
}

// refusal is an answer from the cluster (refused, unauthorised): asking
// another member would get the same.
type refusal struct{ msg string }

func (r refusal) Error() string { return r.msg }

// call sends one request to one agent and decodes a 2xx answer into out.
func (c *apiClient) call(ctx context.Context, method, url string, body []byte, out any) error {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 == 2 {
		if out == nil {
			return nil
		}
		return json.Unmarshal(b, out)
	}
	var e struct{ Error string }
	_ = json.Unmarshal(b, &e)
	switch resp.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return refusal{fmt.Sprintf("%s: %s: %s", url, resp.Status, e.Error)}
	case http.StatusConflict, http.StatusBadRequest, http.StatusNotFound:
		return refusal{e.Error}
	}
	return fmt.Errorf("%s: %s: %s", url, resp.Status, e.Error)
}

// each tries the agents in order until one answers; a refusal ends it.
func (c *apiClient) each(f func(base string) error) error {
	var errs []error
	for _, u := range c.apis {
		err := f(strings.TrimRight(u, "/"))
		if err == nil {
			return nil
		}
		var refused refusal
		if errors.As(err, &refused) {
			return err
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
