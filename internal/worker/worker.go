// Package worker is granary's cache server. A worker serves the metadata
// (stat, list) and data (byte ranges of blocks) of the datasets it is
// configured with, caching both: metadata in a per-dataset meta.Cache, data
// as block files on its tiers (cache.Store). It fetches from the UFS what it
// does not hold — one request per missing page however many readers want it —
// under the dataset's UFS limits, shared by every reader.
//
// It listens on three endpoints: the data endpoint (TCP, for clients on any
// host), a unix socket (the same API plus short-circuit lookups, for clients
// on its own host) and the admin endpoint (/metrics, /healthz, /v1/status,
// pprof).
package worker

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/granary-cache/granary/internal/block"
	"github.com/granary-cache/granary/internal/bufpool"
	"github.com/granary-cache/granary/internal/cache"
	"github.com/granary-cache/granary/internal/config"
	"github.com/granary-cache/granary/internal/dataset"
	"github.com/granary-cache/granary/internal/flight"
	"github.com/granary-cache/granary/internal/membership"
	"github.com/granary-cache/granary/internal/meta"
	"github.com/granary-cache/granary/internal/transport"
	"github.com/granary-cache/granary/internal/ufs"
	"github.com/granary-cache/granary/internal/wire"
)

// Worker is one cache worker.
type Worker struct {
	cfg      *config.Config
	log      *slog.Logger
	datasets *dataset.Set
	metas    map[string]*meta.Cache
	scans    map[string]*scan // the dataset's size on the UFS
	store    *cache.Store
	// tierPages describes the pages of each MEM tier (see tierPages);
	// tierMounts are the tmpfs the worker mounted for them.
	tierPages  map[string]string
	tierMounts []string
	// storeReady is closed once store is set: the store's scrub may call
	// repair before cache.Open has returned it.
	storeReady chan struct{}
	layout     cache.Layout
	token      string
	reg        *prometheus.Registry
	m          *metrics

	pages     flight.Group[pageKey, []byte]
	readahead chan struct{} // bounds background page fetches
	pageBufs  bufpool.Pool  // a page's bytes on their way from the UFS or a file

	loads *loadRegistry
	prio  priority // jobs' reads before loads
	// fills are the large blocks being fetched whole in the background
	// because a client of this host asked where they are (see locate).
	fills sync.Map // block.ID -> struct{}
	// locateFetchMax is the largest block a locate fetches before it
	// answers (fixedLocateFetch; tests lower it).
	locateFetchMax int64
	members        atomic.Pointer[membership.Source]
	lastView       atomic.Pointer[membership.View] // kept while draining
	advertised     string                          // the data address peers and clients dial
	reach          *membership.Reach
	peerHTTP       *http.Client
	peerBlocks     *transport.Framed // reads from other workers (near copies, reads through a directory reader)
	frames         *transport.Server // the block protocol on the data port
	// localFrames serves it on the unix socket, with locate requests.
	localFrames *transport.Server
	started     time.Time

	data, admin, unix net.Listener
	servers           []*http.Server
	wg                sync.WaitGroup

	bgCtx    context.Context // background fetches; cancelled by Close
	bgCancel context.CancelFunc
	bg       sync.WaitGroup
}

type pageKey struct {
	block block.ID
	page  int
}

// New checks cfg, opens the datasets and the cache tiers, and binds the
// listeners; Serve starts answering.
func New(cfg *config.Config, log *slog.Logger) (*Worker, error) {
	if log == nil {
		log = slog.Default()
	}
	for _, addr := range []struct{ field, addr string }{{"worker.listen", cfg.Worker.Listen}, {"worker.admin", cfg.Worker.Admin}} {
		if !config.IsLoopback(addr.addr) && !cfg.Auth.Secured() {
			return nil, fmt.Errorf("%s is %s, which is not loopback: set auth.token_file or auth.tls so that only known clients are served", addr.field, addr.addr)
		}
	}
	id, err := resolveID(cfg.Worker)
	if err != nil {
		return nil, err
	}
	own := *cfg
	own.Worker.ID = id
	cfg = &own
	wc := cfg.Worker
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	w := &Worker{
		cfg: cfg, log: log.With("worker", wc.ID), token: cfg.Auth.Token, reg: reg, m: newMetrics(reg),
		metas:          map[string]*meta.Cache{},
		scans:          map[string]*scan{},
		layout:         cache.Layout{BlockSize: int64(wc.BlockSize), PageSize: int64(wc.PageSize)},
		readahead:      make(chan struct{}, 8),
		started:        time.Now(),
		loads:          newLoadRegistry(),
		locateFetchMax: fixedLocateFetch,
		storeReady:     make(chan struct{}),
	}
	w.reach = &membership.Reach{
		ProbeAfter: time.Duration(cfg.Client.ProbeAfter), ProbeTimeout: time.Duration(cfg.Client.ConnectTimeout),
		OnDown: func(id, addr string, err error) {
			w.log.Warn("peer marked down", "peer", id, "err", err)
			w.peerBlocks.Drop(addr) // its connections may hang (a partition)
		},
	}
	w.peerHTTP = newPeerHTTP(cfg)
	w.peerBlocks = transport.NewFramed(transport.Options{Token: cfg.Auth.Token, TLS: cfg.Auth.TLS.ClientConfig(),
		ConnectTimeout: time.Duration(cfg.Client.ConnectTimeout)})
	w.frames = &transport.Server{Handler: w, Authorize: w.authorizeConn, Log: w.log, Observe: w.observeFramed}
	w.localFrames = &transport.Server{Handler: w, Admit: admitPeer, Authorize: w.authorizeLocal, Locate: w.locateFrame,
		Log: w.log, Observe: w.observeFramed}
	w.registerMembershipHealth()
	w.bgCtx, w.bgCancel = context.WithCancel(context.Background())
	// Enough pages for the fetches of a few blocks at once (64 MiB of 4 MiB
	// pages each), kept while the worker is busy.
	w.pageBufs = bufpool.Pool{Size: int(w.layout.PageSize), Max: int(max(256<<20/w.layout.PageSize, 16))}
	if w.datasets, err = dataset.OpenAll(cfg, ufs.NewMetrics(reg)); err != nil {
		return nil, err
	}
	pinned := map[string]bool{}
	for _, ds := range cfg.Datasets {
		mc := meta.New(ds.Name, ds.MetadataSync.Interval)
		mc.Merged = func() { w.m.merged.WithLabelValues("metadata").Inc() }
		w.metas[ds.Name] = mc
		w.scans[ds.Name] = &scan{}
		pinned[ds.Name] = ds.Pin
	}
	tiers := make([]cache.TierConfig, len(wc.Tiers))
	w.tierPages = map[string]string{}
	var adopted []string // tmpfs a killed worker left: ours once listening
	for i, t := range wc.Tiers {
		tiers[i] = cache.TierConfig{Name: t.Name, Path: t.Path, Quota: int64(t.Quota), High: t.High, Low: t.Low}
		st := tierPages(t)
		if st.pages == "" {
			continue
		}
		w.tierPages[t.Name] = st.pages
		switch {
		case st.owned:
			w.tierMounts = append(w.tierMounts, t.Path)
		case st.adopt:
			adopted = append(adopted, t.Path)
		}
		if st.warn {
			w.log.Warn("a MEM tier in small pages: warm reads of large files by passthrough run at about half the speed of huge pages", "tier", t.Name, "path", t.Path, "pages", st.pages)
		} else {
			w.log.Info("tier pages", "tier", t.Name, "path", t.Path, "pages", st.pages)
		}
	}
	w.store, err = cache.Open(cache.Config{Tiers: tiers, Layout: w.layout, Metrics: cache.NewMetrics(reg),
		Pinned:    func(ds string) bool { return pinned[ds] },
		ScrubRate: wc.ScrubRate(), ScrubInterval: time.Duration(wc.ScrubInterval), Repair: w.repair})
	if err != nil {
		w.datasets.Close()
		w.releaseTiers()
		return nil, err
	}
	close(w.storeReady)
	if err := w.listen(); err != nil {
		w.Close()
		return nil, err
	}
	// Its listeners are bound: a second worker of this configuration
	// would have failed there, so the tiers are this one's alone.
	w.tierMounts = append(w.tierMounts, adopted...)
	if w.advertised, err = advertise(wc, w.data.Addr()); err != nil {
		w.Close()
		return nil, err
	}
	if err := w.openMembership(); err != nil {
		w.Close()
		return nil, err
	}
	return w, nil
}

func (w *Worker) listen() error {
	var err error
	if w.data, err = net.Listen("tcp", w.cfg.Worker.Listen); err != nil {
		return fmt.Errorf("worker.listen: %w", err)
	}
	if w.admin, err = net.Listen("tcp", w.cfg.Worker.Admin); err != nil {
		return fmt.Errorf("worker.admin: %w", err)
	}
	if tc := w.cfg.Auth.TLS.ServerConfig(); tc != nil {
		// Data: only clients with a certificate of the CA. Admin: anyone
		// may scrape /metrics and /healthz, the rest needs a certificate
		// (or the token).
		w.data = tls.NewListener(w.data, tc)
		admin := tc.Clone()
		admin.ClientAuth = tls.VerifyClientCertIfGiven
		w.admin = tls.NewListener(w.admin, admin)
	}
	sock := w.cfg.Worker.Socket
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		return fmt.Errorf("worker.socket: %w", err)
	}
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		return fmt.Errorf("worker.socket %s: another worker is serving it", sock)
	}
	os.Remove(sock) // left by a worker that died
	if w.unix, err = net.Listen("unix", sock); err != nil {
		return fmt.Errorf("worker.socket: %w", err)
	}
	return nil
}

// Addr is the data endpoint's address (with the port chosen, if it was 0).
func (w *Worker) Addr() string { return w.data.Addr().String() }

// AdminAddr is the admin endpoint's address.
func (w *Worker) AdminAddr() string { return w.admin.Addr().String() }

// Socket is the unix socket's path.
func (w *Worker) Socket() string { return w.cfg.Worker.Socket }

// ID is the worker's name.
func (w *Worker) ID() string { return w.cfg.Worker.ID }

// Registry holds every metric of the worker.
func (w *Worker) Registry() *prometheus.Registry { return w.reg }

// Serve answers on every endpoint until ctx ends, then shuts down cleanly:
// requests in flight get a few seconds to finish.
func (w *Worker) Serve(ctx context.Context) error {
	api := w.apiMux(false)
	local := w.apiMux(true)
	servers := []struct {
		l net.Listener
		h http.Handler
	}{{transport.Listen(w.data, w.frames), api}, {transport.Listen(w.unix, w.localFrames), local}, {w.admin, w.adminMux()}}
	errs := make(chan error, len(servers))
	for _, s := range servers {
		srv := &http.Server{Handler: s.h, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 5 * time.Minute,
			ErrorLog: slog.NewLogLogger(w.log.Handler(), slog.LevelDebug)}
		switch s.l {
		case w.admin:
		case servers[1].l: // the unix socket
			srv.ConnContext = peerContext
		default:
			srv.ConnContext = tlsContext // Request.TLS is not set through the split listener
		}
		w.servers = append(w.servers, srv)
		w.wg.Go(func() {
			if err := srv.Serve(s.l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errs <- err
			}
		})
	}
	w.bg.Go(func() { w.scanLoop(w.bgCtx) })
	w.log.Info("worker serving", "data", w.Addr(), "admin", w.AdminAddr(), "socket", w.Socket(),
		"datasets", strings.Join(w.datasets.Names(), ","))
	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	// Leave the live set first (etcd: the lease is revoked), so that readers
	// send nothing new here while the requests in flight finish.
	if cerr := w.closeMembership(); cerr != nil {
		w.log.Warn("leaving the membership", "err", cerr)
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, srv := range w.servers {
		srv.Shutdown(shutdown)
	}
	w.frames.Close()
	w.localFrames.Close()
	w.wg.Wait()
	return errors.Join(err, w.Close())
}

// Close releases the tiers, datasets and listeners.
func (w *Worker) Close() error {
	w.bgCancel()
	w.bg.Wait()
	errs := []error{w.closeMembership()}
	w.reach.Close()
	w.peerBlocks.Close()
	for _, l := range []net.Listener{w.data, w.admin, w.unix} {
		if l != nil {
			l.Close()
		}
	}
	if w.unix != nil {
		os.Remove(w.cfg.Worker.Socket)
	}
	if w.store != nil {
		errs = append(errs, w.store.Close())
	}
	errs = append(errs, w.releaseTiers())
	if w.datasets != nil {
		errs = append(errs, w.datasets.Close())
	}
	return errors.Join(errs...)
}

func (w *Worker) apiMux(local bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+wire.PathStat, w.instrument("stat", w.handleStat))
	mux.HandleFunc("GET "+wire.PathList, w.instrument("list", w.handleList))
	mux.HandleFunc("GET "+wire.PathBlock, w.instrument("block", transport.HTTPHandler(w).ServeHTTP))
	mux.HandleFunc("POST "+wire.PathRefresh, w.instrument("refresh", w.handleRefresh))
	mux.HandleFunc("GET "+wire.PathUFSRead, w.instrument("ufs_read", w.handleUFSRead))
	mux.HandleFunc("GET "+wire.PathStatus, w.handleStatus)
	mux.HandleFunc("POST "+wire.PathLoad, w.instrument("load", w.handleLoad))
	mux.HandleFunc("GET "+wire.PathLoads, w.handleLoads)
	mux.HandleFunc("GET "+wire.PathBlocks, w.handleBlocks)
	mux.HandleFunc("POST "+wire.PathLoadEnd, w.handleLoadEnd)
	mux.HandleFunc("GET "+wire.PathPing, func(rw http.ResponseWriter, _ *http.Request) { rw.WriteHeader(http.StatusNoContent) })
	if local {
		mux.HandleFunc("GET "+wire.PathLocal, w.instrument("local", w.handleLocal))
		return w.authenticate(samePeer(mux), true)
	}
	return w.authenticate(mux, false)
}

func (w *Worker) adminMux() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(w.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", w.handleHealthz)
	private := http.NewServeMux()
	private.HandleFunc("GET "+wire.PathStatus, w.handleStatus)
	private.HandleFunc("/debug/pprof/", pprof.Index)
	private.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	private.HandleFunc("/debug/pprof/profile", pprof.Profile)
	private.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	private.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.Handle("/", w.authenticate(private, false))
	return mux
}

// authenticate lets a request through when it carries what the auth
// section asks for: with auth.tls a verified client certificate, with
// auth.token_file the token, and with both either one (the data endpoint's
// handshake already refuses connections without a certificate; the admin
// endpoint asks for one but also takes the token, so that /v1/status and
// pprof can be reached with curl and the token). The unix socket (local) has
// no TLS: it takes the token, and samePeer checks who is at the other end.
func (w *Worker) authenticate(next http.Handler, local bool) http.Handler {
	needCert := w.cfg.Auth.TLS.Enabled() && !local
	if w.token == "" && !needCert {
		return next
	}
	want := []byte("Bearer " + w.token)
	return http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		state := r.TLS
		if state == nil {
			state, _ = r.Context().Value(tlsKey{}).(*tls.ConnectionState)
		}
		certOK := needCert && state != nil && len(state.VerifiedChains) > 0
		tokenOK := w.token != "" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) == 1
		if certOK || tokenOK {
			next.ServeHTTP(rw, r)
			return
		}
		w.m.unauthorized.Inc()
		switch {
		case !needCert:
			http.Error(rw, "missing or wrong token", http.StatusUnauthorized)
		case w.token == "":
			http.Error(rw, "a client certificate of the cluster's CA is required", http.StatusUnauthorized)
		default:
			http.Error(rw, "a client certificate of the cluster's CA or the token is required", http.StatusUnauthorized)
		}
	})
}

// authorizeConn checks a framed connection at its hello, as authenticate
// checks each HTTP request of the data endpoint: a verified client
// certificate or the token.
func (w *Worker) authorizeConn(token string, state *tls.ConnectionState) error {
	needCert := w.cfg.Auth.TLS.Enabled()
	if w.token == "" && !needCert {
		return nil
	}
	certOK := needCert && state != nil && len(state.VerifiedChains) > 0
	tokenOK := w.token != "" && subtle.ConstantTimeCompare([]byte(token), []byte(w.token)) == 1
	if certOK || tokenOK {
		return nil
	}
	w.m.unauthorized.Inc()
	if !needCert {
		return errors.New("missing or wrong token")
	}
	return errors.New("a client certificate of the cluster's CA or the token is required")
}

// authorizeLocal checks a connection of the block protocol on the unix
// socket, as authenticate does its HTTP: the token when there is one (the
// socket has no TLS).
func (w *Worker) authorizeLocal(token string, _ *tls.ConnectionState) error {
	if w.token == "" || subtle.ConstantTimeCompare([]byte(token), []byte(w.token)) == 1 {
		return nil
	}
	w.m.unauthorized.Inc()
	return errors.New("missing or wrong token")
}

type tlsKey struct{}

// tlsContext keeps a data connection's TLS state for authenticate.
func tlsContext(ctx context.Context, c net.Conn) context.Context {
	if st := transport.TLSState(c); st != nil {
		return context.WithValue(ctx, tlsKey{}, st)
	}
	return ctx
}

// dataset finds a dataset this worker serves and cleans the path; a path
// that is not already clean is refused rather than reinterpreted.
func (w *Worker) dataset(name, p string) (*dataset.Dataset, string, error) {
	d, ok := w.datasets.Get(name)
	if !ok {
		return nil, "", ufs.NewError("resolve", p, ufs.ClassInvalid, fmt.Errorf("dataset %q is not served by worker %s", name, w.ID()))
	}
	clean, err := ufs.CleanPath(p)
	if err != nil || clean != p {
		return nil, "", &ufs.Error{Op: "resolve", Dataset: name, Path: p, Class: ufs.ClassInvalid, Err: fmt.Errorf("%w: not a clean path", ufs.ErrInvalidPath)}
	}
	return d, clean, nil
}
