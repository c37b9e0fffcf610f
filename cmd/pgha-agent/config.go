package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"github.com/pgha/pgha/agent"
)

// The cluster-wide configuration (GET and PATCH /config): what every member
// shares, kept in Raft. show-config prints it; edit-config changes it,
// from flags or in $EDITOR, as one committed change.

func showConfigCmd() *cobra.Command {
	var f apiFlags
	var format string
	cmd := &cobra.Command{
		Use:   "show-config [--format yaml|json]",
		Short: "Print the cluster-wide configuration (kept in Raft) and its version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "yaml" && format != "json" {
				return fmt.Errorf("--format: %q is not yaml or json", format)
			}
			c, err := f.client()
			if err != nil {
				return err
			}
			v, err := fetchConfig(cmd, c)
			if err != nil {
				return err
			}
			if format == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			}
			_, err = io.WriteString(cmd.OutOrStdout(), renderConfig(v))
			return err
		},
	}
	cmd.Flags().StringVar(&format, "format", "yaml", "yaml or json")
	f.register(cmd, true)
	return cmd
}

func editConfigCmd() *cobra.Command {
	var f apiFlags
	var pg, set, hbaAdd, hbaRemove []string
	var yes bool
	cmd := &cobra.Command{
		Use:   "edit-config [--set SECTION.KEY=VALUE ...] [--pg NAME=VALUE ...] [--hba-add LINE] [--hba-remove LINE] [--yes]",
		Short: "Change the cluster-wide configuration: in $EDITOR, or with --set and --pg for scripts",
		Long: `Change the cluster-wide configuration, kept in Raft and applied by every
agent: parameters PostgreSQL can reload take effect everywhere at once;
the ones that need a restart show as pending_restart in list until then.

Without flags, the configuration opens in $EDITOR (vi if unset); the
change is shown and applied after you confirm. --set sets one of the
timing, failover and router settings, e.g. --set timing.fence_timeout=2s,
--set failover.synchronous_mode=false, --set router.pool_size=40,
--set archive.archive_mode=on, --set backup.tool=pgbackrest or, for a
list, --set router.write_functions=nextval,setval or --set
'router.hba=["host all all 10.0.0.0/8 scram-sha-256"]'; --pg NAME=VALUE sets a PostgreSQL
parameter, --pg NAME= removes it; --hba-add and --hba-remove change the
pg_hba.conf lines every member gets after pgha's own. A bad value is
refused with its key named, and nothing changes.

Timing and failover changes take effect on every agent's next pass. After
a shorter fence_timeout, leaders keep judging the primary's lease by the
longer one (prior_fence_timeout in show-config) until every lease granted
under it has ended.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			cur, err := fetchConfig(cmd, c)
			if err != nil {
				return err
			}
			next := maps.Clone(cur.PostgreSQL.Parameters)
			nextHBA := slices.Clone(cur.PostgreSQL.HBA)
			nextSettings := settingsOf(cur)
			scripted := len(pg)+len(set)+len(hbaAdd)+len(hbaRemove) > 0
			if scripted {
				for _, kv := range set {
					if err := setSetting(nextSettings, kv); err != nil {
						return err
					}
				}
				for _, l := range hbaRemove {
					i := slices.Index(nextHBA, l)
					if i < 0 {
						return fmt.Errorf("--hba-remove %q: no such line in the configuration", l)
					}
					nextHBA = slices.Delete(nextHBA, i, i+1)
				}
				nextHBA = append(nextHBA, hbaAdd...)
				for _, kv := range pg {
					k, v, ok := strings.Cut(kv, "=")
					if !ok || k == "" {
						return fmt.Errorf("--pg %q: want NAME=VALUE (NAME= removes it)", kv)
					}
					if v == "" {
						delete(next, k)
					} else {
						next[k] = v
					}
				}
			} else if next, nextHBA, nextSettings, err = editInEditor(cur); err != nil {
				return err
			}
			settingsPatch, diff := settingsDiff(settingsOf(cur), nextSettings)
			diff = append(diff, configDiff(cur.PostgreSQL.Parameters, next)...)
			diff = append(diff, hbaDiff(cur.PostgreSQL.HBA, nextHBA)...)
			if len(diff) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no change")
				return nil
			}
			fmt.Fprintln(cmd.OutOrStdout(), strings.Join(diff, "\n"))
			if !scripted && !yes && !confirm(cmd, "Apply these changes?") {
				return errors.New("not applied")
			}
			section := map[string]any{"parameters": mergePatch(cur.PostgreSQL.Parameters, next)}
			if !slices.Equal(cur.PostgreSQL.HBA, nextHBA) {
				section["pg_hba"] = nextHBA
			}
			patch := map[string]any{"version": cur.Version, "postgresql": section}
			maps.Copy(patch, settingsPatch)
			body, _ := json.Marshal(patch)
			return c.each(func(base string) error {
				var v agent.ConfigView
				if err := c.call(cmd.Context(), "PATCH", base+"/config", body, &v); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "applied: version %d\n", v.Version)
				return nil
			})
		},
	}
	cmd.Flags().StringArrayVar(&set, "set", nil, "set a timing, failover, router, archive or backup setting (SECTION.KEY=VALUE, e.g. timing.fence_timeout=2s); repeatable")
	cmd.Flags().StringArrayVar(&pg, "pg", nil, "set a PostgreSQL parameter (NAME=VALUE; NAME= removes it); repeatable")
	cmd.Flags().StringArrayVar(&hbaAdd, "hba-add", nil, "append a pg_hba.conf line (after pgha's own); repeatable")
	cmd.Flags().StringArrayVar(&hbaRemove, "hba-remove", nil, "remove a pg_hba.conf line, written exactly as shown; repeatable")
	cmd.Flags().BoolVar(&yes, "yes", false, "apply an $EDITOR change without asking")
	f.register(cmd, true)
	return cmd
}

func fetchConfig(cmd *cobra.Command, c *apiClient) (agent.ConfigView, error) {
	var v agent.ConfigView
	err := getFirst(cmd.Context(), c, "/config", &v)
	if v.PostgreSQL.Parameters == nil {
		v.PostgreSQL.Parameters = map[string]string{}
	}
	return v, err
}

// editable is the YAML an operator edits.
type editable struct {
	Timing     agent.TimingView    `yaml:"timing"`
	Failover   agent.FailoverView  `yaml:"failover"`
	Router     agent.RouterView    `yaml:"router"`
	Archive    agent.ArchiveConfig `yaml:"archive"`
	Backup     agent.BackupConfig  `yaml:"backup"`
	PostgreSQL struct {
		Parameters map[string]string `yaml:"parameters"`
		HBA        []string          `yaml:"pg_hba"`
	} `yaml:"postgresql"`
}

func renderConfig(v agent.ConfigView) string {
	var e editable
	e.Timing, e.Failover, e.Router = v.Timing, v.Failover, v.Router
	e.Archive, e.Backup = v.Archive, v.Backup
	e.PostgreSQL.Parameters = v.PostgreSQL.Parameters
	e.PostgreSQL.HBA = v.PostgreSQL.HBA
	b, _ := yaml.Marshal(e)
	prior := ""
	if v.PriorFenceTimeout != "" {
		prior = fmt.Sprintf("# leases are judged by the earlier fence_timeout %s until every lease granted under it has ended\n", v.PriorFenceTimeout)
	}
	return fmt.Sprintf("# pgha cluster-wide configuration, version %d (kept in Raft; every member applies it)\n%s%s", v.Version, prior, b)
}

// editInEditor opens the configuration in $EDITOR and returns the
// parameters and pg_hba lines it holds when the editor exits.
func editInEditor(cur agent.ConfigView) (map[string]string, []string, map[string]any, error) {
	dir, err := os.MkdirTemp("", "pgha-edit-config-")
	if err != nil {
		return nil, nil, nil, err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(path, []byte(renderConfig(cur)), 0o600); err != nil {
		return nil, nil, nil, err
	}
	editor := os.Getenv("EDITOR")
	if editor == "" {
		editor = "vi"
	}
	args := append(strings.Fields(editor), path)
	ed := exec.Command(args[0], args[1:]...)
	ed.Stdin, ed.Stdout, ed.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := ed.Run(); err != nil {
		return nil, nil, nil, fmt.Errorf("editor %s: %w", editor, err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, nil, err
	}
	var e editable
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&e); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, nil, fmt.Errorf("the edited configuration: %w (nothing applied)", err)
	}
	if e.PostgreSQL.Parameters == nil {
		e.PostgreSQL.Parameters = map[string]string{}
	}
	edited := cur
	edited.Timing, edited.Failover, edited.Router = e.Timing, e.Failover, e.Router
	edited.Archive, edited.Backup = e.Archive, e.Backup
	return e.PostgreSQL.Parameters, e.PostgreSQL.HBA, settingsOf(edited), nil
}

// settingsOf flattens the timing and failover sections to
// "section.key" -> value, as JSON has them (strings, bools, numbers).
func settingsOf(v agent.ConfigView) map[string]any {
	out := map[string]any{}
	for section, x := range map[string]any{"timing": v.Timing, "failover": v.Failover, "router": v.Router, "archive": v.Archive, "backup": v.Backup} {
		b, _ := json.Marshal(x)
		var m map[string]any
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.UseNumber() // byte counts print as written, not as 1.048576e+06
		_ = dec.Decode(&m)
		for k, val := range m {
			out[section+"."+k] = val
		}
	}
	return out
}

// setSetting applies one --set SECTION.KEY=VALUE to settings, typed as the
// current value is; the agent validates the value itself.
func setSetting(settings map[string]any, kv string) error {
	k, v, ok := strings.Cut(kv, "=")
	cur, known := settings[k]
	switch {
	case !ok || k == "":
		return fmt.Errorf("--set %q: want SECTION.KEY=VALUE, e.g. timing.fence_timeout=2s", kv)
	case !known:
		return fmt.Errorf("--set %q: unknown key %q; the keys are %s (PostgreSQL parameters: --pg)", kv, k, strings.Join(slices.Sorted(maps.Keys(settings)), ", "))
	}
	switch cur.(type) {
	case bool:
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("--set %s: %q is not true or false", k, v)
		}
		settings[k] = b
	case []any:
		// A list: JSON (["a", "b"], for hba lines), or comma-separated.
		var list []string
		if strings.HasPrefix(strings.TrimSpace(v), "[") {
			if err := json.Unmarshal([]byte(v), &list); err != nil {
				return fmt.Errorf("--set %s: %q is not a JSON list of strings: %v", k, v, err)
			}
		} else if v != "" {
			for _, x := range strings.Split(v, ",") {
				list = append(list, strings.TrimSpace(x))
			}
		}
		out := make([]any, len(list))
		for i, x := range list {
			out[i] = x
		}
		settings[k] = out
	case json.Number:
		if _, err := strconv.ParseInt(v, 10, 64); err != nil {
			return fmt.Errorf("--set %s: %q is not a whole number (bytes)", k, v)
		}
		settings[k] = json.Number(v)
	default:
		settings[k] = v
	}
	return nil
}

// settingsDiff returns the patch sections ("timing", "failover") with the
// settings that changed from cur to next, and one line per change.
func settingsDiff(cur, next map[string]any) (map[string]any, []string) {
	patch := map[string]any{}
	var lines []string
	for _, k := range slices.Sorted(maps.Keys(next)) {
		if reflect.DeepEqual(cur[k], next[k]) {
			continue
		}
		lines = append(lines, fmt.Sprintf("~ %s: %v -> %v", k, cur[k], next[k]))
		section, key, _ := strings.Cut(k, ".")
		m, _ := patch[section].(map[string]any)
		if m == nil {
			m = map[string]any{}
			patch[section] = m
		}
		m[key] = next[k]
	}
	return patch, lines
}

// hbaDiff lists the pg_hba lines taken out and added.
func hbaDiff(cur, next []string) []string {
	var out []string
	for _, l := range cur {
		if !slices.Contains(next, l) {
			out = append(out, "- postgresql.pg_hba: "+l)
		}
	}
	for _, l := range next {
		if !slices.Contains(cur, l) {
			out = append(out, "+ postgresql.pg_hba: "+l)
		}
	}
	if len(out) == 0 && !slices.Equal(cur, next) {
		out = append(out, "~ postgresql.pg_hba: the same lines in another order")
	}
	return out
}

// configDiff lists the changes from cur to next, one line each, by name.
func configDiff(cur, next map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(next)) {
		if v, ok := cur[k]; !ok {
			out = append(out, fmt.Sprintf("+ postgresql.parameters.%s: %s", k, next[k]))
		} else if v != next[k] {
			out = append(out, fmt.Sprintf("~ postgresql.parameters.%s: %s -> %s", k, v, next[k]))
		}
	}
	for _, k := range slices.Sorted(maps.Keys(cur)) {
		if _, ok := next[k]; !ok {
			out = append(out, fmt.Sprintf("- postgresql.parameters.%s (was %s)", k, cur[k]))
		}
	}
	return out
}

// mergePatch is the JSON merge patch from cur to next: changed values, and
// null for the removed ones.
func mergePatch(cur, next map[string]string) map[string]any {
	p := map[string]any{}
	for k, v := range next {
		if cur[k] != v {
			p[k] = v
		}
	}
	for k := range cur {
		if _, ok := next[k]; !ok {
			p[k] = nil
		}
	}
	return p
}

func confirm(cmd *cobra.Command, q string) bool {
	fmt.Fprintf(cmd.OutOrStdout(), "%s [y/N] ", q)
	line, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
	a := strings.ToLower(strings.TrimSpace(line))
	return a == "y" || a == "yes"
}
