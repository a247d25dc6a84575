package cli

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDiscoverConfig: without --config, a command uses the one
// configuration of the machine, and says which to pass when there are
// several or none, or when the cache `granary up` started is gone.
func TestDiscoverConfig(t *testing.T) {
	home := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", home)
	oldSystem := systemConfig
	systemConfig = filepath.Join(home, "etc-granary.yaml")
	t.Cleanup(func() { systemConfig = oldSystem })
	up := filepath.Join(home, "granary", "up", "granary.yaml")
	sock := filepath.Join(home, "w1.sock")
	writeConf := func(path string) {
		t.Helper()
		os.MkdirAll(filepath.Dir(path), 0o755)
		doc := fmt.Sprintf("datasets:\n  - {name: d, ufs: \"file://%s\"}\nmembership:\n  workers:\n    - {id: w1, addr: \"127.0.0.1:7700\", socket: %q}\n", home, sock)
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	discover := func() (string, error) {
		g := &globals{}
		err := g.discoverConfig()
		return g.configPath, err
	}

	if _, err := discover(); err == nil || !strings.Contains(err.Error(), "no configuration: pass --config FILE") || !strings.Contains(err.Error(), up) {
		t.Errorf("none: %v", err)
	}
	writeConf(up)
	if _, err := discover(); err == nil || !strings.Contains(err.Error(), "is not running") {
		t.Errorf("up's config without its workers: %v", err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if p, err := discover(); err != nil || p != up {
		t.Errorf("up running: %q, %v", p, err)
	}
	writeConf(systemConfig)
	if _, err := discover(); err == nil || !strings.Contains(err.Error(), "several configurations") ||
		!strings.Contains(err.Error(), up) || !strings.Contains(err.Error(), systemConfig) {
		t.Errorf("two: %v", err)
	}
	os.Remove(up)
	if p, err := discover(); err != nil || p != systemConfig {
		t.Errorf("the machine's: %q, %v", p, err)
	}
	g := &globals{configPath: "/given.yaml"}
	if err := g.discoverConfig(); err != nil || g.configPath != "/given.yaml" {
		t.Errorf("--config given: %q, %v", g.configPath, err)
	}
	g = &globals{datasets: []string{"d=file:///x"}}
	if err := g.discoverConfig(); err != nil || g.configPath != "" {
		t.Errorf("--dataset given: %q, %v", g.configPath, err)
	}
}
