package cluster

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/granary-cache/granary/internal/cephstat"
	"github.com/granary-cache/granary/internal/cephtest"
)

// cephTree is a tree of small files written to CephFS, remembered by size
// and sha256 (20,000 files would not fit comfortably in memory as bytes).
type cephTree struct {
	files map[string][sha256.Size]byte
	bytes int64
}

// cephTreeShape is the tree of the MDS test: $GRANARY_CEPH_TREE as
// DIRSxFILES (the full size is 200x100), 60x100 by default.
func cephTreeShape(t *testing.T) (dirs, files int) {
	shape := os.Getenv("GRANARY_CEPH_TREE")
	if shape == "" {
		shape = "60x100"
	}
	d, f, ok := strings.Cut(shape, "x")
	dirs, err1 := strconv.Atoi(d)
	files, err2 := strconv.Atoi(f)
	if !ok || err1 != nil || err2 != nil || dirs <= 0 || files <= 0 {
		t.Fatalf("GRANARY_CEPH_TREE=%q: want DIRSxFILES, as in 200x100", shape)
	}
	return dirs, files
}

// writeCephTree writes dirs×files files of 90–110 KiB below root with 8
// writers.
func writeCephTree(t *testing.T, root string, dirs, files int) *cephTree {
	tr := &cephTree{files: map[string][sha256.Size]byte{}}
	var mu sync.Mutex
	work := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for i := range work {
				r := rand.New(rand.NewPCG(uint64(i), 7))
				b := make([]byte, 90<<10+r.IntN(20<<10))
				for j := 0; j+8 <= len(b); j += 8 {
					v := r.Uint64()
					for k := range 8 {
						b[j+k] = byte(v >> (8 * k))
					}
				}
				name := fmt.Sprintf("class%03d/img%05d.jpg", i%dirs, i)
				p := filepath.Join(root, name)
				os.MkdirAll(filepath.Dir(p), 0o755)
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Error(err)
				}
				mu.Lock()
				tr.files[name] = sha256.Sum256(b)
				tr.bytes += int64(len(b))
				mu.Unlock()
			}
		})
	}
	for i := range dirs * files {
		work <- i
	}
	close(work)
	wg.Wait()
	return tr
}

// epoch reads the tree below root the way a training job does: it walks
// the directories (ImageFolder), then reads every file in a shuffled order
// with 16 readers, checking each one's sha256. It returns the time taken.
func (tr *cephTree) epoch(t *testing.T, root string, seed uint64) time.Duration {
	t.Helper()
	start := time.Now()
	var names []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, strings.TrimPrefix(p, root+"/"))
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(names) != len(tr.files) {
		t.Fatalf("the walk of %s found %d files; want %d", root, len(names), len(tr.files))
	}
	rand.New(rand.NewPCG(seed, 3)).Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
	work := make(chan string)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for name := range work {
				b, err := os.ReadFile(filepath.Join(root, name))
				if err != nil {
					t.Errorf("read %s: %v", name, err)
				} else if sha256.Sum256(b) != tr.files[name] {
					t.Errorf("%s: %d bytes with the wrong sha256", name, len(b))
				}
			}
		})
	}
	for _, n := range names {
		work <- n
	}
	close(work)
	wg.Wait()
	return time.Since(start)
}

// backgroundReads bounds what the OSD serves while nobody reads the tree:
// radosgw and the MDS read small objects of their own all the time (about
// 9 reads every 2 s here). Any file of the tree is larger.
const backgroundReads = 64 << 10

// cephLoad is what a phase cost the cluster.
type cephLoad struct {
	mds cephstat.MDS // requests since the phase began; sessions opened since the test began
	osd cephstat.OSD
	dur time.Duration
}

type cephMeter struct {
	t        *testing.T
	mds, osd string
	start    cephstat.MDS // at the test's start: its sessions are not ours
}

func newCephMeter(t *testing.T, dir string) *cephMeter {
	m := &cephMeter{t: t, mds: filepath.Join(dir, "run", "ceph-mds.a.asok"), osd: filepath.Join(dir, "run", "ceph-osd.0.asok")}
	m.start, _ = m.read()
	return m
}

func (m *cephMeter) read() (cephstat.MDS, cephstat.OSD) {
	ctx := context.Background()
	mds, err := cephstat.ReadMDS(ctx, m.mds)
	if err != nil {
		m.t.Fatal(err)
	}
	osd, err := cephstat.ReadOSD(ctx, m.osd)
	if err != nil {
		m.t.Fatal(err)
	}
	return mds, osd
}

// measure runs fn and returns the requests and reads it caused.
func (m *cephMeter) measure(fn func() time.Duration) cephLoad {
	mds0, osd0 := m.read()
	d := fn()
	mds1, osd1 := m.read()
	l := cephLoad{mds: mds1.Since(mds0), osd: osd1.Since(osd0), dur: d}
	l.mds.Sessions = mds1.Since(m.start).Sessions
	return l
}

// TestCephFSSparesTheMDS is the reason granary exists. A tree of ~100 KiB
// files on CephFS is read for 3 epochs by each of 2 clients, first through
// 2 ceph-fuse mounts directly, then through 2 granary mounts in front of 3
// workers. It checks that:
//   - granary's cold epoch costs the MDS no more than one ceph-fuse
//     client's first epoch;
//   - every later epoch, and the whole second client, cost the MDS and the
//     OSD nothing;
//   - the MDS holds at most one session per worker, and once the dataset is
//     cached and the workers idle, granary holds caps on at most 1% of the
//     files;
//   - the UFS sent each byte once: bytes read ÷ dataset size = 1.00.
func TestCephFSSparesTheMDS(t *testing.T) {
	dir := cephtest.Dir(t)
	needFUSE(t)
	dirs, perDir := cephTreeShape(t)
	root := fmt.Sprintf("mds-%d", time.Now().UnixNano())
	w := cephtest.FuseMount(t, dir)
	start := time.Now()
	tr := writeCephTree(t, filepath.Join(w, root), dirs, perDir)
	cephtest.Unmount(t, w) // the writer's sizes reach the MDS
	t.Logf("wrote %d files (%d MiB) in %d directories in %v", len(tr.files), tr.bytes>>20, dirs, time.Since(start).Round(time.Millisecond))
	meter := newCephMeter(t, dir)

	// The baseline: two ceph-fuse clients reading the tree directly.
	var direct [2][3]cephLoad
	for c := range 2 {
		mnt := cephtest.FuseMount(t, dir)
		for e := range 3 {
			dropCaches(t)
			direct[c][e] = meter.measure(func() time.Duration { return tr.epoch(t, filepath.Join(mnt, root), uint64(10*c+e)) })
			l := direct[c][e]
			t.Logf("ceph-fuse client %d epoch %d: %v MDS requests %v, %v OSD reads, %v (%.0f MB/s)",
				c+1, e+1, l.mds.Requests, l.mds.ByOp, l.osd.Reads, l.dur.Round(time.Millisecond), float64(tr.bytes)/l.dur.Seconds()/1e6)
		}
		cephtest.Unmount(t, mnt)
	}

	// granary: 3 workers, 2 mounts. Each worker's cache holds the tree.
	quota := tr.bytes/2 + 256<<20
	tiers := func(_ int, d string) string {
		return fmt.Sprintf("    - {name: SSD, path: %s/ssd, quota: %d}\n", d, quota)
	}
	const idle = 3 * time.Second
	c := startCluster(t, clusterOpts{workers: 3, tiers: tiers, datasets: fmt.Sprintf(
		"  - name: cf\n    ufs: cephfs://cephfs/%s\n    metadata_sync: never\n    options: {conf: %q, idle_unmount: %v}\n", root, cephtest.Conf(dir), idle)})
	var cached [2][3]cephLoad
	clients := map[string]bool{} // the PIDs of granary's MDS sessions
	for cl := range 2 {
		m := c.mount(t)
		for e := range 3 {
			dropCaches(t)
			cached[cl][e] = meter.measure(func() time.Duration { return tr.epoch(t, filepath.Join(m.dir, "cf"), uint64(10*cl+e)) })
			l := cached[cl][e]
			t.Logf("granary client %d epoch %d: %v MDS requests %v, %v OSD reads (%v bytes), %d sessions, %v (%.0f MB/s)",
				cl+1, e+1, l.mds.Requests, l.mds.ByOp, l.osd.Reads, l.osd.ReadBytes, len(l.mds.Sessions), l.dur.Round(time.Millisecond), float64(tr.bytes)/l.dur.Seconds()/1e6)
			switch {
			case cl == 0 && e == 0 && l.mds.Requests > direct[0][0].mds.Requests:
				t.Errorf("cold epoch: %v MDS requests; want at most ceph-fuse's %v", l.mds.Requests, direct[0][0].mds.Requests)
			case (cl > 0 || e > 0) && (l.mds.Requests != 0 || l.osd.ReadBytes > backgroundReads):
				t.Errorf("client %d epoch %d: %v MDS requests and %v bytes read from the OSD; want none", cl+1, e+1, l.mds.Requests, l.osd.ReadBytes)
			}
			if n := len(l.mds.Sessions); n > 3 {
				t.Errorf("%d MDS sessions for granary; want at most one per worker (3)", n)
			}
			for _, s := range l.mds.Sessions {
				clients[s.PID] = true
			}
		}
	}
	ufsBytes := c.metric("granary_ufs_read_bytes_total", `dataset="cf"`)
	if ratio := ufsBytes / float64(tr.bytes); ratio < 0.99 || ratio > 1.01 {
		t.Errorf("the UFS sent %.0f bytes for a %d-byte dataset read 6 times: %.3f×; want 1.00", ufsBytes, tr.bytes, ratio)
	} else {
		t.Logf("UFS bytes ÷ dataset size over 2 clients × 3 epochs: %.4f", ratio)
	}
	t.Logf("directory-reader reads: %v", c.metric("granary_worker_directory_reader_reads_total"))
	// The MDS saw one client per worker that asked the UFS for anything,
	// whatever the number of mounts and readers.
	touched := 0
	for _, w := range c.workers {
		if w.metric("granary_ufs_operations_total", `dataset="cf"`) > 0 {
			touched++
		}
	}
	t.Logf("MDS clients of granary: %d processes; workers that asked the UFS: %d", len(clients), touched)
	// Sessions are sampled at the end of each epoch, so a worker that
	// idled out before one ended may be missed: at least one, and no more
	// than the workers that touched the UFS.
	if len(clients) == 0 || len(clients) > touched {
		t.Errorf("the MDS saw %d granary client processes; want one per worker that touched the UFS (%d)", len(clients), touched)
	}

	// Once idle, the workers give their sessions and caps back.
	var caps, sessions int
	for deadline := time.Now().Add(idle + 20*time.Second); ; time.Sleep(250 * time.Millisecond) {
		mds, _ := meter.read()
		ours := mds.Since(meter.start)
		caps, sessions = ours.Caps(), len(ours.Sessions)
		if caps*100 <= len(tr.files) || time.Now().After(deadline) {
			break
		}
	}
	t.Logf("idle: granary holds %d sessions and %d caps for %d files", sessions, caps, len(tr.files))
	if caps*100 > len(tr.files) {
		t.Errorf("granary holds %d caps once idle; want at most 1%% of %d files", caps, len(tr.files))
	}

	ratio := func(a, b cephLoad) float64 { return b.dur.Seconds() / a.dur.Seconds() }
	t.Logf("throughput granary ÷ ceph-fuse: cold %.2f×, warm (epoch 2) %.2f×, warm (epoch 3) %.2f×, second client cold %.2f×",
		ratio(cached[0][0], direct[0][0]), ratio(cached[0][1], direct[0][1]), ratio(cached[0][2], direct[0][2]), ratio(cached[1][0], direct[1][0]))
}

// TestCephFSMDSPausedMidEpoch: the MDS stops answering in the middle of an
// epoch read by 8 readers through the mount. What is cached keeps being
// served; what is not fails with EIO within a bounded time; nothing hangs
// and the epoch ends. Once the MDS is back, every file reads again.
func TestCephFSMDSPausedMidEpoch(t *testing.T) {
	dir := cephtest.Dir(t)
	needFUSE(t)
	root := fmt.Sprintf("pause-%d", time.Now().UnixNano())
	w := cephtest.FuseMount(t, dir)
	tr := writeCephTree(t, filepath.Join(w, root), 2, 12) // class000 and class001
	cephtest.Unmount(t, w)
	// An open mode set: auto would list the dataset at mount time, and the
	// uncached files below must be ones no listing has reached.
	c := startCluster(t, clusterOpts{workers: 2, datasets: fmt.Sprintf(
		"  - name: cf\n    ufs: cephfs://cephfs/%s\n    metadata_sync: never\n    open_mode: passthrough\n    options: {conf: %q, op_timeout: 2s}\n", root, cephtest.Conf(dir))})
	m := c.mount(t)
	mnt := filepath.Join(m.dir, "cf")
	read := func(name string) error {
		b, err := os.ReadFile(filepath.Join(mnt, name))
		if err == nil && sha256.Sum256(b) != tr.files[name] {
			err = fmt.Errorf("%s: wrong sha256", name)
		}
		return err
	}
	// class000 is read whole first: cached from then on. Nothing has
	// listed class001 yet (whose listing would give the workers the caps
	// to open its files without the MDS).
	var cached, uncached []string
	for name := range tr.files {
		if strings.HasPrefix(name, "class000/") {
			if err := read(name); err != nil {
				t.Fatal(err)
			}
			cached = append(cached, name)
		} else {
			uncached = append(uncached, name)
		}
	}

	// The epoch: the cached files first; the MDS is paused once 5 of them
	// were read, with the others in flight, and then come the rest.
	var (
		mu       sync.Mutex
		done     int
		five     = make(chan struct{}) // 5 reads done: time to pause
		slowest  time.Duration
		failures = map[string]error{}
	)
	work := make(chan string)
	var wg sync.WaitGroup
	epochStart := time.Now()
	for range 8 {
		wg.Go(func() {
			for name := range work {
				start := time.Now()
				err := read(name)
				took := time.Since(start)
				mu.Lock()
				slowest = max(slowest, took)
				if err != nil {
					failures[name] = err
				}
				if done++; done == 5 {
					close(five)
				}
				mu.Unlock()
			}
		})
	}
	fed := make(chan struct{})
	go func() { // the cached files; the pause comes from the test's goroutine
		defer close(fed)
		for _, n := range cached {
			work <- n
		}
	}()
	<-five
	resume := cephtest.PauseMDS(t, dir) // the other cached reads are in flight or queued
	<-fed
	for _, n := range uncached {
		work <- n
	}
	close(work)
	wg.Wait()
	epoch := time.Since(epochStart)
	resume()
	t.Logf("epoch with the MDS paused after 5 reads: %d of %d reads failed, in %v; slowest read %v",
		len(failures), len(tr.files), epoch.Round(time.Millisecond), slowest.Round(time.Millisecond))
	for name, err := range failures {
		if strings.HasPrefix(name, "class000/") {
			t.Errorf("cached %s with the MDS paused: %v", name, err)
		} else if !errors.Is(err, syscall.EIO) {
			t.Errorf("uncached %s with the MDS paused: %v; want EIO", name, err)
		}
	}
	if len(failures) != len(uncached) {
		t.Errorf("%d reads failed; want the %d uncached ones", len(failures), len(uncached))
	}
	if slowest > 60*time.Second {
		t.Errorf("a read took %v; want every read bounded by the op timeouts", slowest)
	}

	// Back: the same files read (the failures were not cached).
	var lastErr error
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(500 * time.Millisecond) {
		if lastErr = read(uncached[0]); lastErr == nil {
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("after the MDS came back: %v", lastErr)
	}
	for name := range failures {
		if err := read(name); err != nil {
			t.Errorf("%s after the MDS came back: %v", name, err)
		}
	}
}
