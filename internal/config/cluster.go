package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Worker configures a cache worker: where it listens and what it caches on.
type Worker struct {
	// ID names the worker in the membership. With a static membership the
	// default is the host name; with etcd the worker makes one up the first
	// time it starts and keeps it in its state directory, so that it keeps
	// its place in the ring across restarts.
	ID string `yaml:"id"`
	// Listen is the data endpoint (host:port) clients read from.
	Listen string `yaml:"listen"`
	// Advertise is the address other machines reach the data endpoint at
	// (etcd membership); default: Listen, or, when Listen has no host, this
	// machine's first non-loopback address with Listen's port.
	Advertise string `yaml:"advertise"`
	// Host names the machine the worker runs on: clients with the same
	// client.host read its block files directly. Default: the host name.
	Host string `yaml:"host"`
	// Zone is a failure domain, shown by status (e.g. a rack).
	Zone string `yaml:"zone"`
	// Weight is the worker's share of the keys relative to the others
	// (etcd membership; default 1): give a worker with twice the cache
	// twice the weight.
	Weight float64 `yaml:"weight"`
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
	// ScrubBytesPerSecond bounds the background check of every cached page
	// against its CRC32C (default 32MiB; 0 turns it off). A pointer, since
	// 0 is a setting and not the absence of one.
	ScrubBytesPerSecond *Size `yaml:"scrub_bytes_per_second"`
	// ScrubInterval is the pause between two full scrub passes.
	ScrubInterval Duration `yaml:"scrub_interval"`

	// wholeFiles: block_size was not set, so datasets that do not set
	// theirs get whole-file blocks (Dataset.WholeFile).
	wholeFiles bool
}

// ScrubRate is the scrub's bound in bytes per second, 0 when it is off.
func (w Worker) ScrubRate() int64 {
	if w.ScrubBytesPerSecond == nil {
		return DefaultScrubRate
	}
	return int64(*w.ScrubBytesPerSecond)
}

// Tier is one cache tier of a worker.
type Tier struct {
	Name  string  `yaml:"name"` // MEM, SSD or HDD
	Path  string  `yaml:"path"`
	Quota Size    `yaml:"quota"`
	High  float64 `yaml:"high"`
	Low   float64 `yaml:"low"`
	// HugePages, for a MEM tier: "auto" (the default) gives the tier a
	// tmpfs of huge pages (huge=within_size) when its path is on a tmpfs
	// of 4 KiB pages, such as /dev/shm: the worker mounts one of the
	// tier's quota at the path if nothing is there yet, or remounts the
	// tmpfs mounted at the path if it is sized for the tier (an emptyDir
	// of medium Memory). Warm reads
	// of large files by passthrough run about twice as fast from it. It
	// needs CAP_SYS_ADMIN; without it the worker says so and goes on. "off"
	// leaves the path as it is.
	HugePages string `yaml:"huge_pages"`
}

// Values of Tier.HugePages.
const (
	HugePagesAuto = "auto"
	HugePagesOff  = "off"
)

// Auth secures worker endpoints. A worker listening on anything but loopback
// refuses to start without it.
type Auth struct {
	// TokenFile holds a shared secret that clients send as a bearer token.
	TokenFile string `yaml:"token_file"`
	// Token is TokenFile's content, read by Load; never printed.
	Token string `yaml:"-"`
	// TLS secures the data endpoint: workers and clients present
	// certificates of the same CA, and each verifies the other's.
	TLS TLS `yaml:"tls"`
}

// Secured reports whether worker endpoints require a token or a
// certificate.
func (a Auth) Secured() bool { return a.Token != "" || a.TLS.Enabled() }

// Membership says how clients and workers learn who the workers are.
type Membership struct {
	// Type is "static" (the default: the list of workers below) or "etcd"
	// (workers register in etcd; everyone watches it).
	Type    string   `yaml:"type"`
	Workers []Member `yaml:"workers"`
	// Endpoints are the etcd servers' URLs, e.g. http://10.0.0.1:2379.
	Endpoints []string `yaml:"endpoints"`
	// Prefix is where the cluster's keys live in etcd (default /granary):
	// clusters with different prefixes share an etcd without meeting.
	Prefix string `yaml:"prefix"`
	// LeaseTTL is how long a worker that stops answering etcd stays live
	// (default 10s).
	LeaseTTL Duration `yaml:"lease_ttl"`
	// RingGrace is how long a worker may be down before it leaves the ring
	// and its keys move to the others for good (default 10m).
	RingGrace Duration `yaml:"ring_grace"`
	// DialTimeout bounds how long a process waits for etcd when it starts
	// (default 5s): past it, it fails and says so.
	DialTimeout Duration `yaml:"dial_timeout"`
	// TLS for the connection to etcd.
	TLS TLS `yaml:"tls"`
	// Cluster names the cluster on Kubernetes (its workers' Leases carry
	// it as a label; the operator sets it to the CacheRuntime's name).
	Cluster string `yaml:"cluster"`
	// Namespace holds the Leases (default: the pod's own namespace).
	Namespace string `yaml:"namespace"`
	// Kubeconfig reaches the API server from outside a pod (default:
	// $KUBECONFIG, then the pod's service account).
	Kubeconfig string `yaml:"kubeconfig"`
}

// Membership types.
const (
	MembershipStatic = "static"
	MembershipEtcd   = "etcd"
	// MembershipKubernetes: each worker holds a Lease on the Kubernetes
	// API server; everyone watches them.
	MembershipKubernetes = "kubernetes"
)

// Member is one worker of a static membership.
type Member struct {
	ID     string  `yaml:"id"`
	Addr   string  `yaml:"addr"` // its data endpoint, host:port
	Socket string  `yaml:"socket"`
	Host   string  `yaml:"host"` // the machine it runs on (see worker.host)
	Weight float64 `yaml:"weight"`
}

// Client configures readers (the CLI, the FUSE mount, bench).
type Client struct {
	// Timeout bounds one request to a worker before the next owner is tried.
	Timeout Duration `yaml:"timeout"`
	// ConnectTimeout bounds connecting to a worker, and the probe that
	// checks a worker whose request is slow (default 1s): a dead or cut-off
	// worker costs a reader about ProbeAfter + ConnectTimeout, not Timeout.
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// ProbeAfter is how long a request to a worker runs before the worker
	// is probed (default 1s).
	ProbeAfter Duration `yaml:"probe_after"`
	// Host names the machine the client runs on (default: the host name):
	// it reads block files of the workers with the same worker.host.
	Host string `yaml:"host"`
	// FallbackReadsPerSecond bounds direct UFS reads when workers fail, so
	// that a dead worker cannot turn every reader into a UFS client.
	FallbackReadsPerSecond float64 `yaml:"fallback_reads_per_second"`
	// ShortCircuit lets a client read block files of workers on its own
	// host directly (default true).
	ShortCircuit *bool `yaml:"short_circuit"`
	// Protocol is how block reads travel to workers: "framed" (the
	// default: the block protocol, persistent connections with reads
	// multiplexed, falling back to HTTP for a worker that speaks only
	// HTTP) or "http" (one HTTP range request per read).
	Protocol string `yaml:"protocol"`
}

// Block read protocols (client.protocol).
const (
	ProtocolFramed = "framed"
	ProtocolHTTP   = "http"
)

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
	DefaultListen    = "127.0.0.1:7700"
	DefaultAdmin     = "127.0.0.1:7701"
	DefaultStateDir  = "/var/lib/granary"
	DefaultMemPath   = "/dev/shm/granary"
	DefaultMemQuota  = 4 << 30
	DefaultHigh      = 0.95
	DefaultLow       = 0.70
	DefaultReadahead = 4
	DefaultBlockSize = 64 << 20
	// DefaultWholeFile: files up to 1 GiB (the usual training shard) are
	// one block each, and read by passthrough once cached.
	DefaultWholeFile = 1 << 30
	// MaxWholeFile bounds whole_file by the largest block a worker takes.
	MaxWholeFile         = 64 << 30
	DefaultScrubRate     = 32 << 20
	DefaultScrubInterval = Duration(time.Hour)
	DefaultClientTimeout = Duration(30 * time.Second)
	DefaultConnect       = Duration(time.Second)
	DefaultProbeAfter    = Duration(time.Second)
	DefaultFallbackRate  = 200
	DefaultEtcdPrefix    = "/granary"
	DefaultLeaseTTL      = Duration(10 * time.Second)
	DefaultRingGrace     = Duration(10 * time.Minute)
	DefaultDialTimeout   = Duration(5 * time.Second)
	DefaultKubeLeaseTTL  = Duration(30 * time.Second)
)

// checkCluster applies the defaults of the worker, auth, membership and
// client sections and checks them.
func (c *Config) checkCluster(at func(string) *yaml.Node) []problem {
	var ps []problem
	bad := func(field, format string, args ...any) {
		// A field left out has no line: point at the section that lacks it.
		line := at(field).Line
		for f := field; line == 0 && strings.Contains(f, "."); {
			f = f[:strings.LastIndexByte(f, '.')]
			line = at(f).Line
		}
		ps = append(ps, problem{line: line, field: field, msg: fmt.Sprintf(format, args...)})
	}
	w := &c.Worker
	hostname, _ := os.Hostname()
	if w.ID == "" && c.Membership.Type != MembershipEtcd && c.Membership.Type != MembershipKubernetes {
		w.ID = hostname
	}
	if w.Host == "" {
		w.Host = hostname
	}
	if w.Weight < 0 {
		bad("worker.weight", "must not be negative")
	}
	if w.Weight == 0 {
		w.Weight = 1
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
	if w.Advertise != "" {
		if host, _, err := net.SplitHostPort(w.Advertise); err != nil || host == "" {
			bad("worker.advertise", "%q is not host:port", w.Advertise)
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
		w.BlockSize, w.wholeFiles = DefaultBlockSize, true
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
			if ds.WholeFile == 0 && w.wholeFiles {
				ds.WholeFile = DefaultWholeFile
			}
			ds.BlockSize = w.BlockSize
		}
		if ds.BlockSize < w.PageSize || ds.BlockSize%w.PageSize != 0 {
			bad(fmt.Sprintf("datasets[%d].block_size", i), "%s is not a multiple of worker.page_size %s", ds.BlockSize, w.PageSize)
		}
		if ds.WholeFile > MaxWholeFile {
			bad(fmt.Sprintf("datasets[%d].whole_file", i), "%s exceeds %s: a block is one file on one tier", ds.WholeFile, Size(MaxWholeFile))
		}
	}
	if w.Readahead == 0 {
		w.Readahead = DefaultReadahead
	}
	if w.Readahead < 0 {
		w.Readahead = 0
	}
	if w.ScrubBytesPerSecond == nil {
		rate := Size(DefaultScrubRate)
		w.ScrubBytesPerSecond = &rate
	}
	if w.ScrubInterval == 0 {
		w.ScrubInterval = DefaultScrubInterval
	}
	if w.ScrubInterval < Duration(time.Second) {
		// Shorter would read a small cache again and again.
		bad("worker.scrub_interval", "%s is too short: at least 1s", time.Duration(w.ScrubInterval))
	}
	if len(w.Tiers) == 0 {
		name := w.ID
		if name == "" {
			name = hostname
		}
		w.Tiers = []Tier{{Name: "MEM", Path: filepath.Join(DefaultMemPath, name), Quota: DefaultMemQuota}}
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
		switch t.HugePages {
		case "":
			t.HugePages = HugePagesAuto
		case HugePagesAuto, HugePagesOff:
		default:
			bad(f+".huge_pages", "expected auto or off, found %q", t.HugePages)
		}
		if t.HugePages == HugePagesAuto && t.Name != "MEM" {
			t.HugePages = HugePagesOff // a disk tier's page cache is the kernel's
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
	c.checkMembership(bad)
	c.Auth.TLS.load("auth.tls", bad)
	cl := &c.Client
	if cl.Timeout == 0 {
		cl.Timeout = DefaultClientTimeout
	}
	if cl.ConnectTimeout == 0 {
		cl.ConnectTimeout = DefaultConnect
	}
	if cl.ProbeAfter == 0 {
		cl.ProbeAfter = DefaultProbeAfter
	}
	if cl.Host == "" {
		cl.Host = hostname
	}
	if cl.FallbackReadsPerSecond < 0 {
		bad("client.fallback_reads_per_second", "must not be negative")
	}
	if cl.FallbackReadsPerSecond == 0 {
		cl.FallbackReadsPerSecond = DefaultFallbackRate
	}
	switch cl.Protocol {
	case "":
		cl.Protocol = ProtocolFramed
	case ProtocolFramed, ProtocolHTTP:
	default:
		bad("client.protocol", "%q is not one of %s, %s", cl.Protocol, ProtocolFramed, ProtocolHTTP)
	}
	return ps
}

// checkMembership applies the defaults of the membership section and checks
// it.
func (c *Config) checkMembership(bad badFunc) {
	w, m := &c.Worker, &c.Membership
	if m.Type == "" {
		m.Type = MembershipStatic
	}
	switch m.Type {
	case MembershipStatic:
		for field, set := range map[string]bool{"membership.endpoints": len(m.Endpoints) > 0, "membership.prefix": m.Prefix != "",
			"membership.lease_ttl": m.LeaseTTL != 0, "membership.ring_grace": m.RingGrace != 0, "membership.tls": m.TLS.Enabled(),
			"membership.cluster": m.Cluster != "", "membership.namespace": m.Namespace != "", "membership.kubeconfig": m.Kubeconfig != ""} {
			if set {
				bad(field, "is for membership type etcd or kubernetes, not static")
			}
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
			m.Workers = []Member{{ID: w.ID, Addr: w.Listen, Socket: w.Socket, Host: w.Host, Weight: w.Weight}}
		}
	case MembershipEtcd:
		if len(m.Workers) > 0 {
			bad("membership.workers", "a list of workers is for membership type static; with etcd, workers register themselves")
		}
		if len(m.Endpoints) == 0 {
			bad("membership.endpoints", "etcd needs at least one endpoint, such as http://10.0.0.1:2379")
		}
		for i, ep := range m.Endpoints {
			u, err := url.Parse(ep)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad(fmt.Sprintf("membership.endpoints[%d]", i), "%q is not a URL such as http://10.0.0.1:2379", ep)
			}
		}
		if m.Prefix == "" {
			m.Prefix = DefaultEtcdPrefix
		}
		if !strings.HasPrefix(m.Prefix, "/") {
			bad("membership.prefix", "%q does not start with /", m.Prefix)
		}
		if m.LeaseTTL == 0 {
			m.LeaseTTL = DefaultLeaseTTL
		}
		if time.Duration(m.LeaseTTL) < time.Second {
			bad("membership.lease_ttl", "%s is shorter than 1s", m.LeaseTTL)
		}
		if m.RingGrace == 0 {
			m.RingGrace = DefaultRingGrace
		}
		if m.DialTimeout == 0 {
			m.DialTimeout = DefaultDialTimeout
		}
		m.TLS.load("membership.tls", bad)
	case MembershipKubernetes:
		for field, set := range map[string]bool{"membership.workers": len(m.Workers) > 0, "membership.endpoints": len(m.Endpoints) > 0,
			"membership.prefix": m.Prefix != "", "membership.tls": m.TLS.Enabled()} {
			if set {
				bad(field, "is not for membership type kubernetes (workers hold Leases on the API server)")
			}
		}
		if m.Cluster == "" {
			bad("membership.cluster", "kubernetes needs the cluster's name (the CacheRuntime's)")
		}
		if m.Kubeconfig != "" && !filepath.IsAbs(m.Kubeconfig) {
			bad("membership.kubeconfig", "%q is not an absolute path", m.Kubeconfig)
		}
		if m.LeaseTTL == 0 {
			m.LeaseTTL = DefaultKubeLeaseTTL
		}
		if time.Duration(m.LeaseTTL) < 3*time.Second {
			bad("membership.lease_ttl", "%s is shorter than 3s", m.LeaseTTL)
		}
		if m.RingGrace == 0 {
			m.RingGrace = DefaultRingGrace
		}
		if m.DialTimeout == 0 {
			m.DialTimeout = DefaultDialTimeout
		}
	default:
		bad("membership.type", "expected static, etcd or kubernetes, found %q", m.Type)
	}
}

// badFunc reports a problem with a field.
type badFunc func(field, format string, args ...any)

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

// Recheck checks the configuration again after a program changed it (the
// worker command's flags): defaults already applied stay, and a bad value
// is reported by its field.
func (c *Config) Recheck() error {
	var errs []error
	for _, p := range c.checkCluster(func(string) *yaml.Node { return &yaml.Node{} }) {
		errs = append(errs, fmt.Errorf("%s: %s", p.field, p.msg))
	}
	return errors.Join(errs...)
}
