package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/granary-cache/granary/internal/client"
)

// TestChecksumEveryPath: one byte flipped in a cached block file, on the MEM
// tier and on the SSD tier, never reaches a reader, whichever way it reads:
// a client over HTTP, a short-circuit client, `granary cat`, a FUSE mount
// with passthrough, a mount with zero-message opens, and a reader after the
// worker restarted. Each time the reader gets the right sha256 and the
// workers count the bad page (which is fetched again). Each case checks that
// its path was taken, so that a path skipped would fail it.
func TestChecksumEveryPath(t *testing.T) {
	for _, tier := range []string{"MEM", "SSD"} {
		t.Run(tier, func(t *testing.T) { testChecksumTier(t, tier) })
	}
}

func testChecksumTier(t *testing.T, tier string) {
	dir := t.TempDir()
	// One block (so that a mount may hand it to the kernel) of four pages.
	want := make([]byte, blockSize-1000)
	r := rand.New(rand.NewPCG(5, 5))
	for i := range want {
		want[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(filepath.Join(dir, "shard.bin"), want, 0o644); err != nil {
		t.Fatal(err)
	}
	sub := strings.ToLower(tier)
	c := startCluster(t, clusterOpts{workers: 3, datasets: fmt.Sprintf("  - {name: d, ufs: \"file://%s\", open_mode: passthrough}\n", dir),
		tiers: func(_ int, d string) string {
			// Only the tier under test, so that the block lands there; the
			// line after the tiers ends the list and turns the scrub off, so
			// that the read path under test, not the scrub, meets the flip.
			return fmt.Sprintf("    - {name: %s, path: %s/%s, quota: 64MiB}\n  scrub_bytes_per_second: 0\n", tier, d, sub)
		}})
	const name = "/d/shard.bin"
	if err := checkFile(c.client(false), name, want); err != nil {
		t.Fatal(err)
	}
	owner, path := c.onlyBlockFile(t, sub)
	corrupt := func() float64 { return c.metric("granary_cache_corrupt_pages_total") }

	// check flips a byte of a different page each time, runs read, and
	// wants the right bytes, one more corrupt page counted and the block
	// file repaired.
	flips := 0
	check := func(t *testing.T, read func(t *testing.T) []byte) {
		t.Helper()
		before := corrupt()
		flips++
		flipByte(t, path, int64(flips%4)*pageSize+int64(100*flips))
		got := read(t)
		if sha256.Sum256(got) != sha256.Sum256(want) {
			t.Errorf("%d bytes with the wrong sha256", len(got))
		}
		if after := corrupt(); after <= before {
			t.Errorf("granary_cache_corrupt_pages_total %v, before %v: the bad page was not counted", after, before)
		}
		if disk, err := os.ReadFile(path); err != nil || sha256.Sum256(disk) != sha256.Sum256(want) {
			t.Errorf("the block file was not repaired (%v)", err)
		}
	}

	t.Run("http", func(t *testing.T) {
		check(t, func(t *testing.T) []byte {
			cl := c.client(false)
			got := readWhole(t, cl, name, len(want))
			if st := cl.Stats(); st.RemoteReads == 0 || st.ShortCircuitReads != 0 || st.FallbackReads != 0 {
				t.Errorf("client stats %+v: want HTTP reads only", st)
			}
			return got
		})
	})
	t.Run("short-circuit", func(t *testing.T) {
		check(t, func(t *testing.T) []byte {
			cl := c.client(true)
			got := readWhole(t, cl, name, len(want))
			if st := cl.Stats(); st.ShortCircuitReads == 0 || st.RemoteReads != 0 || st.FallbackReads != 0 {
				t.Errorf("client stats %+v: want short-circuit reads only", st)
			}
			return got
		})
	})
	t.Run("cat", func(t *testing.T) {
		// The CLI's client reads short-circuit: the workers see a local
		// request and no block read over HTTP.
		cfg := c.clientConfig(t)
		requests := func(op string) float64 { return c.metric("granary_worker_requests_total", `op="`+op+`"`) }
		local, remote := requests("local"), requests("block")
		check(t, func(t *testing.T) []byte {
			out, err := exec.Command(granary, "cat", "--config", cfg, name).Output()
			if err != nil {
				t.Fatalf("granary cat: %v", err)
			}
			return out
		})
		if requests("local") == local || requests("block") != remote {
			t.Errorf("granary cat made %v local requests and %v block reads over HTTP; want short-circuit only",
				requests("local")-local, requests("block")-remote)
		}
	})
	t.Run("passthrough", func(t *testing.T) {
		needFUSE(t)
		m := c.mount(t)
		before := m.stats(t)
		if !before.Mount.PassthroughSupported {
			t.Skip("the kernel offers no FUSE passthrough")
		}
		check(t, func(t *testing.T) []byte {
			got, err := os.ReadFile(filepath.Join(m.dir, "d", "shard.bin"))
			if err != nil {
				t.Fatal(err)
			}
			return got
		})
		if after := m.stats(t); after.Mount.PassthroughOpens == before.Mount.PassthroughOpens || after.Mount.DaemonReads != before.Mount.DaemonReads {
			t.Errorf("mount: %d passthrough opens, %d daemon reads; want passthrough only",
				after.Mount.PassthroughOpens-before.Mount.PassthroughOpens, after.Mount.DaemonReads-before.Mount.DaemonReads)
		}
	})
	t.Run("zero-message", func(t *testing.T) {
		needFUSE(t)
		m := c.mount(t, "--zero-message-opens")
		check(t, func(t *testing.T) []byte {
			got, err := os.ReadFile(filepath.Join(m.dir, "d", "shard.bin"))
			if err != nil {
				t.Fatal(err)
			}
			return got
		})
		st, cst := m.stats(t), mountClientStats(t, m)
		if st.Mount.PassthroughOpens != 0 || st.Mount.DaemonReads == 0 || cst.ShortCircuitReads == 0 {
			t.Errorf("mount: %d passthrough opens, %d daemon reads, client %+v; want reads through granary, short-circuit",
				st.Mount.PassthroughOpens, st.Mount.DaemonReads, cst)
		}
	})
	t.Run("restart", func(t *testing.T) {
		// Flipped while the worker is down: its journal still vouches for
		// the page, and its new process must not believe it.
		c.stop(owner, syscall.SIGTERM)
		flips++
		flipByte(t, path, 2*pageSize+7)
		c.start(owner)
		before := corrupt()
		for _, short := range []bool{false, true} {
			cl := c.client(short)
			if got := readWhole(t, cl, name, len(want)); sha256.Sum256(got) != sha256.Sum256(want) {
				t.Errorf("after a restart (short-circuit %v): wrong sha256", short)
			}
		}
		if after := corrupt(); after <= before {
			t.Errorf("after a restart: granary_cache_corrupt_pages_total %v, before %v", after, before)
		}
		check(t, func(t *testing.T) []byte { return readWhole(t, c.client(true), name, len(want)) })
	})
}

// onlyBlockFile finds the one block file of the cluster on a tier (its
// directory name under each worker's) and the worker holding it.
func (c *cluster) onlyBlockFile(t *testing.T, tierDir string) (*proc, string) {
	t.Helper()
	var owner *proc
	var found []string
	for _, p := range c.workers {
		files, _ := filepath.Glob(filepath.Join(p.dir, tierDir, "blocks", "*", "*"))
		if len(files) > 0 {
			owner = p
		}
		found = append(found, files...)
	}
	if len(found) != 1 {
		t.Fatalf("%d block files on %s; want 1: %v", len(found), tierDir, found)
	}
	return owner, found[0]
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{b[0] ^ 0x80}, off); err != nil {
		t.Fatal(err)
	}
}

func readWhole(t *testing.T, cl *client.Client, p string, size int) []byte {
	t.Helper()
	f, err := cl.Open(context.Background(), p)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, size)
	if n, err := f.ReadAt(buf, 0); n != size {
		t.Fatalf("read %s: %d bytes, %v", p, n, err)
	}
	return buf
}

// mountClientStats returns the stats of a mount's client.
func mountClientStats(t *testing.T, m *mountProc) client.Stats {
	resp, err := http.Get("http://" + m.admin + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Client client.Stats `json:"client"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st.Client
}
