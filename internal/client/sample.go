package client

import (
	"context"
	"path"
	"slices"
)

// FileSizes is what the first listings of a dataset show of its files.
type FileSizes struct {
	Files    int   `json:"files"`
	Dirs     int   `json:"directories_listed"`
	Median   int64 `json:"median_size"`
	Total    int64 `json:"total_size"`
	Complete bool  `json:"complete"` // the whole tree was listed
}

// SampleSizes lists the dataset breadth first, at most maxDirs directories
// and until it has seen maxFiles files, and sums up their sizes. The
// listings are the ones a job reading the dataset makes first anyway: the
// workers keep them.
func (c *Client) SampleSizes(ctx context.Context, dataset string, maxDirs, maxFiles int) (FileSizes, error) {
	var fs FileSizes
	var sizes []int64
	queue := []string{""}
	for len(queue) > 0 && fs.Dirs < maxDirs && len(sizes) < maxFiles {
		dir := queue[0]
		queue = queue[1:]
		entries, err := c.List(ctx, path.Join("/", dataset, dir))
		if err != nil {
			return fs, err
		}
		fs.Dirs++
		for _, e := range entries {
			switch {
			case e.IsDir():
				queue = append(queue, path.Join(dir, e.Name))
			case e.Mode.IsRegular() && len(sizes) < maxFiles:
				sizes = append(sizes, e.Size)
				fs.Total += e.Size
			}
		}
	}
	fs.Files = len(sizes)
	fs.Complete = len(queue) == 0 && len(sizes) < maxFiles
	if len(sizes) > 0 {
		slices.Sort(sizes)
		fs.Median = sizes[len(sizes)/2]
	}
	return fs, nil
}
