package client

import (
	"context"
	"path"
	"slices"
	"strings"
)

// FileSizes is what the first listings of a dataset show of its files.
type FileSizes struct {
	Files    int   `json:"files"`
	Dirs     int   `json:"directories_listed"`
	Median   int64 `json:"median_size"`
	Total    int64 `json:"total_size"`
	Complete bool  `json:"complete"` // the whole tree was listed
	// TopDirs is the same for each top-level directory whose files the
	// listings reached (Complete is not set there).
	TopDirs map[string]FileSizes `json:"top_directories,omitempty"`
}

// SampleSizes lists the tree at p (a dataset, or a directory of one:
// "dataset/dir") breadth first, at most maxDirs directories and until it
// has seen maxFiles files, and sums up their sizes, for the tree and for
// each of its top-level directories. The listings are the ones a job
// reading the dataset makes first anyway: the workers keep them.
func (c *Client) SampleSizes(ctx context.Context, p string, maxDirs, maxFiles int) (FileSizes, error) {
	var fs FileSizes
	var sizes []int64
	top := map[string]*topSample{}
	queue := []string{""}
	for len(queue) > 0 && fs.Dirs < maxDirs && len(sizes) < maxFiles {
		dir := queue[0]
		queue = queue[1:]
		entries, err := c.List(ctx, path.Join("/", p, dir))
		if err != nil {
			return fs, err
		}
		fs.Dirs++
		var t *topSample
		if dir != "" {
			name, _, _ := strings.Cut(dir, "/")
			if t = top[name]; t == nil {
				t = &topSample{}
				top[name] = t
			}
			t.dirs++
		}
		for _, e := range entries {
			switch {
			case e.IsDir():
				queue = append(queue, path.Join(dir, e.Name))
			case e.Mode.IsRegular() && len(sizes) < maxFiles:
				sizes = append(sizes, e.Size)
				fs.Total += e.Size
				if t != nil {
					t.sizes = append(t.sizes, e.Size)
				}
			}
		}
	}
	fs.Files = len(sizes)
	fs.Complete = len(queue) == 0 && len(sizes) < maxFiles
	fs.Median = median(sizes)
	for name, t := range top {
		if len(t.sizes) == 0 {
			continue
		}
		if fs.TopDirs == nil {
			fs.TopDirs = map[string]FileSizes{}
		}
		sub := FileSizes{Files: len(t.sizes), Dirs: t.dirs, Median: median(t.sizes)}
		for _, s := range t.sizes {
			sub.Total += s
		}
		fs.TopDirs[name] = sub
	}
	return fs, nil
}

// topSample gathers what the listings show below one top-level directory.
type topSample struct {
	dirs  int
	sizes []int64
}

// median sorts sizes and returns the middle one (0 for none).
func median(sizes []int64) int64 {
	if len(sizes) == 0 {
		return 0
	}
	slices.Sort(sizes)
	return sizes[len(sizes)/2]
}
