package config

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Worker configures a cache worker: where it listens and what it caches on.
type Worker struct {
	// ID names the worker in the membership; default: the host name.
	ID string `yaml:"id"`
	// Listen is the data endpoint (host:port) clients read from.
	Listen string `yaml:"listen"`
	// Admin serves /metrics, /healthz, /v1/status and pprof.
	Admin string `yaml:"admin"`
	// Socket is a unix socket for clients on the same host (short-circuit
	// reads); default STATE_DIR/worker.sock.
	Socket   string `yaml:"socket"`
	StateDir string `yaml:"state_dir"`
	// BlockSize is the unit of placement, PageSize the unit of fetching and
	// checksumming.
	BlockSize Size   `yaml:"block_size"`
	PageSize  Size   `yaml:"page_size"`
	Tiers     []Tier `yaml:"tiers"`
	// Readahead is how many pages after a sequential read are fetched early.
	Readahead int `yaml:"readahead"`
}

// Tier is one cache tier of a worker.
type Tier struct {
	Name  string  `yaml:"name"` // MEM, SSD or HDD
	Path  string  `yaml:"path"`
	Quota Size    `yaml:"quota"`
	High  float64 `yaml:"high"`
	Low   float64 `yaml:"low"`
}

// Auth secures worker endpoints. A worker listening on anything but loopback
// refuses to start without it.
type Auth struct {
	// TokenFile holds a shared secret that clients send as a bearer token.
	TokenFile string `yaml:"token_file"`
	// Token is TokenFile's content, read by Load; never printed.
	Token string `yaml:"-"`
}

// Membership says how clients and workers learn who the workers are.
type Membership struct {
	// Type is "static" (the default): the list below.
	Type    string   `yaml:"type"`
	Workers []Member `yaml:"workers"`
}

// Member is one worker of a static membership.
type Member struct {
	ID     string  `yaml:"id"`
	Addr   string  `yaml:"addr"` // its data endpoint, host:port
	Socket string  `yaml:"socket"`
	Weight float64 `yaml:"weight"`
}

// Client configures readers (the CLI, the FUSE mount, bench).
type Client struct {
	// Timeout bounds one request to a worker before the next owner is tried.
	Timeout Duration `yaml:"timeout"`
	// FallbackReadsPerSecond bounds direct UFS reads when workers fail, so
	// that a dead worker cannot turn every reader into a UFS client.
	FallbackReadsPerSecond float64 `yaml:"fallback_reads_per_second"`
	// ShortCircuit lets a client read block files of workers on its own
	// host directly (default true).
	ShortCircuit *bool `yaml:"short_circuit"`
}

// ShortCircuitOn reports whether short-circuit reads are enabled.
func (c Client) ShortCircuitOn() bool { return c.ShortCircuit == nil || *c.ShortCircuit }

// Duration is a time.Duration written as "30s", "5m".
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil || v < 0 {
		return fmt.Errorf("expected a duration such as 30s, found %q", b)
	}
	*d = Duration(v)
	return nil
}

// MarshalText implements encoding.TextMarshaler.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Worker and client defaults.
const (
	DefaultListen        = "127.0.0.1:7700"
	DefaultAdmin         = "127.0.0.1:7701"
	DefaultStateDir      = "/var/lib/granary"
	DefaultMemPath       = "/dev/shm/granary"
	DefaultMemQuota      = 4 << 30
	DefaultHigh          = 0.95
	DefaultLow           = 0.70
	DefaultReadahead     = 4
	DefaultClientTimeout = Duration(30 * time.Second)
	DefaultFallbackRate  = 200
)

// checkCluster applies the defaults of the worker, auth, membership and
// client sections and checks them.
func (c *Config) checkCluster(at func(string) *yaml.Node) []problem {
	var ps []problem
	bad := func(field, format string, args ...any) {
		ps = append(ps, problem{line: at(field).Line, field: field, msg: fmt.Sprintf(format, args...)})
	}
	w := &c.Worker
	if w.ID == "" {
		w.ID, _ = os.Hostname()
	}
	if w.Listen == "" {
		w.Listen = DefaultListen
	}
	if w.Admin == "" {
		w.Admin = DefaultAdmin
	}
	for field, addr := range map[string]string{"worker.listen": w.Listen, "worker.admin": w.Admin} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			bad(field, "%q is not host:port", addr)
		}
	}
	if w.StateDir == "" {
		w.StateDir = DefaultStateDir
	}
	if !filepath.IsAbs(w.StateDir) {
		bad("worker.state_dir", "%q is not an absolute path", w.StateDir)
	}
	if w.Socket == "" {
		w.Socket = filepath.Join(w.StateDir, "worker.sock")
	}
	if w.BlockSize == 0 {
		w.BlockSize = 64 << 20
	}
	if w.PageSize == 0 {
		w.PageSize = 4 << 20
	}
	if w.PageSize > w.BlockSize || w.BlockSize%w.PageSize != 0 {
		bad("worker.block_size", "%s is not a multiple of page_size %s", w.BlockSize, w.PageSize)
	}
	for i := range c.Datasets {
		ds := &c.Datasets[i]
		if ds.BlockSize == 0 {
			ds.BlockSize = w.BlockSize
		}
		if ds.BlockSize < w.PageSize || ds.BlockSize%w.PageSize != 0 {
			bad(fmt.Sprintf("datasets[%d].block_size", i), "%s is not a multiple of worker.page_size %s", ds.BlockSize, w.PageSize)
		}
	}
	if w.Readahead == 0 {
		w.Readahead = DefaultReadahead
	}
	if w.Readahead < 0 {
		w.Readahead = 0
	}
	if len(w.Tiers) == 0 {
		w.Tiers = []Tier{{Name: "MEM", Path: filepath.Join(DefaultMemPath, w.ID), Quota: DefaultMemQuota}}
	}
	names := map[string]bool{}
	for i := range w.Tiers {
		t := &w.Tiers[i]
		f := fmt.Sprintf("worker.tiers[%d]", i)
		t.Name = strings.ToUpper(t.Name)
		switch t.Name {
		case "MEM", "SSD", "HDD":
		default:
			bad(f+".name", "expected MEM, SSD or HDD, found %q", t.Name)
		}
		if names[t.Name] {
			bad(f+".name", "tier %s is defined twice", t.Name)
		}
		names[t.Name] = true
		if !filepath.IsAbs(t.Path) {
			bad(f+".path", "%q is not an absolute path", t.Path)
		}
		if t.Quota <= 0 {
			bad(f+".quota", "a quota such as 4GiB is required")
		}
		if t.High == 0 {
			t.High = DefaultHigh
		}
		if t.Low == 0 {
			t.Low = DefaultLow
		}
		if !(0 < t.Low && t.Low < t.High && t.High <= 1) {
			bad(f+".high", "watermarks must satisfy 0 < low (%.2f) < high (%.2f) <= 1", t.Low, t.High)
		}
	}
	if c.Auth.TokenFile != "" {
		if !filepath.IsAbs(c.Auth.TokenFile) {
			bad("auth.token_file", "%q is not an absolute path", c.Auth.TokenFile)
		} else if b, err := os.ReadFile(c.Auth.TokenFile); err != nil {
			bad("auth.token_file", "cannot read: %v", err)
		} else if c.Auth.Token = strings.TrimSpace(string(b)); c.Auth.Token == "" {
			bad("auth.token_file", "%s is empty", c.Auth.TokenFile)
		}
	}
	m := &c.Membership
	if m.Type == "" {
		m.Type = "static"
	}
	if m.Type != "static" {
		bad("membership.type", "expected static, found %q", m.Type)
	}
	seen := map[string]bool{}
	for i := range m.Workers {
		mw := &m.Workers[i]
		f := fmt.Sprintf("membership.workers[%d]", i)
		if mw.ID == "" {
			bad(f, "missing id")
		} else if seen[mw.ID] {
			bad(f+".id", "worker %q is listed twice", mw.ID)
		}
		seen[mw.ID] = true
		if _, _, err := net.SplitHostPort(mw.Addr); err != nil {
			bad(f+".addr", "%q is not host:port", mw.Addr)
		}
		if mw.Weight < 0 {
			bad(f+".weight", "must not be negative")
		}
		if mw.Weight == 0 {
			mw.Weight = 1
		}
		if mw.Socket != "" && !filepath.IsAbs(mw.Socket) {
			bad(f+".socket", "%q is not an absolute path", mw.Socket)
		}
	}
	if len(m.Workers) == 0 {
		// No list: this host's worker alone, where the worker section says.
		m.Workers = []Member{{ID: w.ID, Addr: w.Listen, Socket: w.Socket, Weight: 1}}
	}
	cl := &c.Client
	if cl.Timeout == 0 {
		cl.Timeout = DefaultClientTimeout
	}
	if cl.FallbackReadsPerSecond == 0 {
		cl.FallbackReadsPerSecond = DefaultFallbackRate
	}
	return ps
}

// IsLoopback reports whether a listen address only accepts local peers.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
