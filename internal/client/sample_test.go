package client

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestSampleSizes(t *testing.T) {
	e := newEnv(t, envOpts{workers: 2, datasets: map[string]string{"d": ""}})
	e.write("d", "top.txt", 10)
	for i := range 9 {
		e.write("d", fmt.Sprintf("imgs/a/%d.jpg", i), 1000+i)
	}
	for i := range 3 {
		e.write("d", fmt.Sprintf("ckpt/%d.pt", i), 50000+i)
	}
	if err := os.Mkdir(filepath.Join(e.dirs["d"], "empty"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, err := e.c.SampleSizes(ctx, "d", 64, 1000)
	if err != nil {
		t.Fatal(err)
	}
	// 13 files: 10, 1000..1008, 50000..50002; the middle one is 1005.
	if s.Files != 13 || s.Dirs != 5 || s.Median != 1005 || !s.Complete || s.Total != 10+9*1004+3*50001 {
		t.Errorf("the whole dataset: %+v", s)
	}
	if len(s.TopDirs) != 2 {
		t.Fatalf("top-level directories with files: %+v", s.TopDirs)
	}
	if got := s.TopDirs["imgs"]; got.Files != 9 || got.Dirs != 2 || got.Median != 1004 {
		t.Errorf("imgs: %+v", got)
	}
	if got := s.TopDirs["ckpt"]; got.Files != 3 || got.Dirs != 1 || got.Median != 50001 || got.Total != 3*50001 {
		t.Errorf("ckpt: %+v", got)
	}
	// A directory of the dataset; and the bounds.
	if s, err := e.c.SampleSizes(ctx, "d/imgs", 64, 1000); err != nil || s.Files != 9 || len(s.TopDirs) != 1 || s.TopDirs["a"].Files != 9 {
		t.Errorf("d/imgs: %+v, %v", s, err)
	}
	if s, err := e.c.SampleSizes(ctx, "d", 64, 4); err != nil || s.Files != 4 || s.Complete {
		t.Errorf("at most 4 files: %+v, %v", s, err)
	}
	if s, err := e.c.SampleSizes(ctx, "d", 1, 1000); err != nil || s.Dirs != 1 || s.Files != 1 || s.Complete || len(s.TopDirs) != 0 {
		t.Errorf("one directory: %+v, %v", s, err)
	}
	if _, err := e.c.SampleSizes(ctx, "d/missing", 64, 1000); err == nil {
		t.Error("a missing directory was sampled")
	}
}
