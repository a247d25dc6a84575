package multihost

import (
	"fmt"
	"testing"
)

// TestNearCopies: with near_cache, the worker on the reader's machine keeps
// copies of the blocks its mount reads from the other workers, so that the
// second epoch of a dataset that fits on the machine is read locally (FUSE
// passthrough of the local block files); a dataset that does not fit still
// reads right, from its owners.
func TestNearCopies(t *testing.T) {
	near := fmt.Sprintf("  - {name: near, ufs: \"file://%s\", near_cache: true, open_mode: passthrough}\n  - {name: far, ufs: \"file://%s\", open_mode: passthrough}\n", dataDir, dataDir)
	for _, tc := range []struct {
		name  string
		quota string
		fits  bool
	}{{"fits", "512MiB", true}, {"does not fit", "48MiB", false}} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, worldOpts{workers: 3, datasets: near, memQuota: tc.quota})
			// The mount runs on w1's machine.
			m := w.mountOn(w.workers["w1"].host)
			for _, ds := range []string{"near", "far"} {
				readEpoch(t, m.dir, ds, 16, 1, 0, nil).check(t, ds+": first epoch")
				before := m.stats(t)
				readEpoch(t, m.dir, ds, 16, 2, 0, nil).check(t, ds+": second epoch")
				after := m.stats(t)
				opens, local := after.Opens-before.Opens, after.PassthroughOpens-before.PassthroughOpens
				t.Logf("%s: second epoch: %d opens, %d by passthrough", ds, opens, local)
				switch {
				case ds == "near" && tc.fits && float64(local) < 0.99*float64(opens):
					t.Errorf("near copies: %d of %d opens local, want all", local, opens)
				case ds == "far" && float64(local) > 0.5*float64(opens):
					t.Errorf("without near copies, %d of %d opens were local: more than w1's share", local, opens)
				case ds == "near" && !tc.fits && local == opens:
					t.Errorf("a dataset bigger than the tier was read all locally")
				}
			}
			nearBlocks := 0
			for _, b := range cachedBlocks(t, w, w.workers["w1"], "near") {
				if b.Near {
					nearBlocks++
				}
			}
			t.Logf("w1 holds %d near copies", nearBlocks)
			if tc.fits && nearBlocks == 0 {
				t.Errorf("w1 holds no near copy")
			}
		})
	}
}
