package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/granary-cache/granary/internal/config"
)

// The commands that read through a cache (ls, cat, stat, status, load,
// mount, refresh, member) find it without --config when there is one
// obvious candidate: the configuration `granary up` writes in its default
// state directory, or the system's /etc/granary/granary.yaml. With several,
// or none, they say which to pass rather than guess.

// systemConfig is where a machine's granary configuration lives (a
// variable for tests).
var systemConfig = "/etc/granary/granary.yaml"

// configCandidates lists the configurations this machine has, with what
// each is.
func configCandidates() (paths, kinds []string) {
	up := filepath.Join(defaultStateDir(), "granary.yaml")
	for _, c := range []struct{ path, kind string }{{up, "written by granary up"}, {systemConfig, "this machine's"}} {
		if st, err := os.Stat(c.path); err == nil && st.Mode().IsRegular() {
			paths = append(paths, c.path)
			kinds = append(kinds, c.kind)
		}
	}
	return paths, kinds
}

// discoverConfig sets --config when it was not given (nor $GRANARY_CONFIG,
// nor any --dataset) and exactly one configuration is found.
func (g *globals) discoverConfig() error {
	if g.configPath != "" || len(g.datasets) > 0 {
		return nil
	}
	up := filepath.Join(defaultStateDir(), "granary.yaml")
	paths, kinds := configCandidates()
	switch len(paths) {
	case 0:
		return fmt.Errorf("no configuration: pass --config FILE (or set $GRANARY_CONFIG); `granary up` writes one to %s, and a machine's lives in %s", up, systemConfig)
	case 1:
		if paths[0] == up {
			if err := upRunning(up); err != nil {
				return err
			}
		}
		g.configPath = paths[0]
		return nil
	}
	var list []string
	for i, p := range paths {
		list = append(list, fmt.Sprintf("%s (%s)", p, kinds[i]))
	}
	return fmt.Errorf("several configurations: %s; pass --config FILE to choose one", strings.Join(list, ", "))
}

// upRunning checks that the workers of a configuration `granary up` wrote
// are there: their unix sockets exist while they run.
func upRunning(path string) error {
	cfg, err := config.Load(path)
	if err != nil {
		return err
	}
	for _, m := range cfg.Membership.Workers {
		if m.Socket == "" {
			continue
		}
		if _, err := os.Stat(m.Socket); errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("the cache `granary up` started (%s) is not running: start it again, or pass --config FILE", path)
		}
	}
	return nil
}
