package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/granary-cache/granary/internal/ufs"
)

// entry is one file or directory as the file commands print it.
type entry struct {
	Name    string    `json:"name"`
	Path    string    `json:"path"`
	Size    int64     `json:"size"`
	Mode    string    `json:"mode"`
	IsDir   bool      `json:"is_dir"`
	ModTime time.Time `json:"mtime"`
	Version string    `json:"version,omitempty"`
}

func newEntry(nsPath string, fi ufs.FileInfo, name string) entry {
	return entry{Name: name, Path: nsPath, Size: fi.Size, Mode: fi.Mode.String(), IsDir: fi.IsDir(),
		ModTime: fi.ModTime.UTC(), Version: fi.Version}
}

// nsJoin joins a namespace directory and a child name.
func nsJoin(dir, name string) string {
	return strings.TrimSuffix(dir, "/") + "/" + name
}

func newLsCmd(g *globals) *cobra.Command {
	var long, asJSON, unsorted bool
	cmd := &cobra.Command{
		Use:   "ls [-l] /DATASET/PATH",
		Short: "List a directory of a dataset (or the datasets, for /)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p := "/"
			if len(args) == 1 {
				p = args[0]
			}
			ns, err := g.openNamespace()
			if err != nil {
				return err
			}
			defer ns.Close()
			return list(cmd.Context(), g.stdout, ns, p, long, asJSON, unsorted)
		},
	}
	cmd.Flags().BoolVarP(&long, "long", "l", false, "long format: mode, size, modification time")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print a JSON array of entries")
	cmd.Flags().BoolVarP(&unsorted, "unsorted", "U", false, "print entries as the UFS returns them, page by page, without sorting (for huge directories)")
	return cmd
}

func list(ctx context.Context, w io.Writer, ns namespace, p string, long, asJSON, unsorted bool) error {
	out := newLister(w, long, asJSON)
	fi, err := ns.Stat(ctx, p)
	if err != nil {
		return err
	}
	if !fi.IsDir() { // like ls, a file lists as itself
		out.add(newEntry(p, fi, fi.Name))
		return out.finish()
	}
	for page, err := range ns.List(ctx, p) {
		if err != nil {
			return err
		}
		for _, fi := range page {
			out.add(newEntry(nsJoin(p, fi.Name), fi, fi.Name))
		}
		if unsorted {
			if err := out.flush(); err != nil {
				return err
			}
		}
	}
	return out.finish()
}

// lister prints entries as names, as an ls -l table or as JSON.
type lister struct {
	w       io.Writer
	long    bool
	asJSON  bool
	entries []entry
	printed int
}

func newLister(w io.Writer, long, asJSON bool) *lister {
	return &lister{w: w, long: long, asJSON: asJSON}
}

func (l *lister) add(e entry) { l.entries = append(l.entries, e) }

// flush prints what has been added so far, in the order added.
func (l *lister) flush() error {
	entries := l.entries
	l.entries = l.entries[:0]
	if l.asJSON {
		for _, e := range entries {
			sep := ",\n"
			if l.printed == 0 {
				sep = "[\n"
			}
			l.printed++
			b, err := json.Marshal(e)
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(l.w, "%s  %s", sep, b); err != nil {
				return err
			}
		}
		return nil
	}
	l.printed += len(entries)
	if !l.long {
		for _, e := range entries {
			if _, err := fmt.Fprintln(l.w, e.Name); err != nil {
				return err
			}
		}
		return nil
	}
	width := 1
	for _, e := range entries {
		width = max(width, len(strconv.FormatInt(e.Size, 10)))
	}
	for _, e := range entries {
		name := e.Name
		if e.IsDir {
			name += "/"
		}
		mtime := "                " // as wide as the layout below
		if !e.ModTime.IsZero() && e.ModTime.Unix() > 0 {
			mtime = e.ModTime.Local().Format("2006-01-02 15:04")
		}
		if _, err := fmt.Fprintf(l.w, "%s %*d %s %s\n", e.Mode, width, e.Size, mtime, name); err != nil {
			return err
		}
	}
	return nil
}

// finish sorts what is left by name, prints it and closes the output.
func (l *lister) finish() error {
	slices.SortFunc(l.entries, func(a, b entry) int { return cmp.Compare(a.Name, b.Name) })
	if err := l.flush(); err != nil {
		return err
	}
	if l.asJSON {
		end := "\n]\n"
		if l.printed == 0 {
			end = "[]\n"
		}
		_, err := io.WriteString(l.w, end)
		return err
	}
	return nil
}

func newStatCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stat /DATASET/PATH...",
		Short: "Show the attributes of files or directories",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, err := g.openNamespace()
			if err != nil {
				return err
			}
			defer ns.Close()
			var entries []entry
			for _, p := range args {
				fi, err := ns.Stat(cmd.Context(), p)
				if err != nil {
					return err
				}
				e := newEntry(p, fi, p)
				if asJSON {
					entries = append(entries, e)
					continue
				}
				kind := "regular file"
				if e.IsDir {
					kind = "directory"
				}
				fmt.Fprintf(g.stdout, "  File: %s\n  Size: %-12d Type: %s\n  Mode: %s (%04o)\n",
					p, e.Size, kind, e.Mode, fi.Mode.Perm())
				if !e.ModTime.IsZero() {
					fmt.Fprintf(g.stdout, "Modify: %s\n", e.ModTime.Local().Format("2006-01-02 15:04:05.000000000 -0700"))
				}
				if e.Version != "" {
					fmt.Fprintf(g.stdout, "Version: %s\n", e.Version)
				}
			}
			if asJSON {
				if len(entries) == 1 {
					return writeJSON(g.stdout, entries[0])
				}
				return writeJSON(g.stdout, entries)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (an object for one path, an array for several)")
	return cmd
}

func newCatCmd(g *globals) *cobra.Command {
	var off, length int64
	cmd := &cobra.Command{
		Use:   "cat /DATASET/PATH...",
		Short: "Write the content of files to standard output",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if off < 0 {
				return fmt.Errorf("--offset %d: must not be negative", off)
			}
			ns, err := g.openNamespace()
			if err != nil {
				return err
			}
			defer ns.Close()
			for _, p := range args {
				if err := ns.Copy(cmd.Context(), g.stdout, p, off, length); err != nil {
					return err
				}
			}
			return nil
		},
	}
	cmd.Flags().Int64Var(&off, "offset", 0, "first byte to print")
	cmd.Flags().Int64Var(&length, "length", -1, "number of bytes to print (-1: to the end)")
	return cmd
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
