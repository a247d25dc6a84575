// Command image writes container images of granary as OCI image layouts,
// without a container daemon:
//
//	go run . -variant static -binary ../../bin/granary -out ../../bin/image-static
//	go run . -variant cephfs -binary ../../bin/granary-cephfs -out ../../bin/image-cephfs
//
// The static image holds the CGO_ENABLED=0 binary, CA certificates, root
// and nobody, and /tmp; the cephfs image holds the cgo binary built with
// -tags cephfs and libcephfs with its whole run-time closure, taken from
// Debian's packages (debian.go says how). README.md has the details.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

func main() {
	if _, err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "image:", err)
		}
		os.Exit(2)
	}
}

// run is the command, with its arguments; it returns what it built.
func run(args []string, stdout, stderr io.Writer) (*result, error) {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: image -variant static|cephfs -binary GRANARY -out DIR [flags]\n\nWrites an OCI image layout of granary to DIR. Flags:")
		fs.PrintDefaults()
	}
	c := config{log: stdout}
	var plugins, epoch string
	fs.StringVar(&c.variant, "variant", "static", "static (CGO_ENABLED=0 binary) or cephfs (cgo binary with -tags cephfs, and libcephfs)")
	fs.StringVar(&c.binary, "binary", "", "the granary binary to put in the image")
	fs.StringVar(&c.out, "out", "", "the OCI image layout directory to write (missing or empty)")
	fs.BoolVar(&c.force, "force", false, "replace the OCI image layout already in -out")
	fs.StringVar(&c.version, "version", "", "the version for the labels and the tag (default: what BINARY version --json says)")
	fs.StringVar(&c.tag, "tag", "", "org.opencontainers.image.ref.name of the image in index.json (default: the version, with -cephfs for that variant)")
	fs.StringVar(&c.caCerts, "ca-certs", caPath, "the CA bundle to ship (Debian's ca-certificates package writes it)")
	fs.StringVar(&plugins, "ceph-plugins", "compressor,crypto", "Ceph plugin directories to ship, under libceph-common's directory (cephfs; \"\" for none)")
	fs.StringVar(&epoch, "epoch", os.Getenv("SOURCE_DATE_EPOCH"), "the time of the image and of every file, in seconds since 1970 (default $SOURCE_DATE_EPOCH, else 0)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(fs.Args(), " "))
	}
	if c.binary == "" {
		return nil, fmt.Errorf("-binary is required")
	}
	if c.out == "" {
		return nil, fmt.Errorf("-out is required")
	}
	for _, p := range strings.Split(plugins, ",") {
		if p = strings.TrimSpace(p); p != "" {
			if strings.Contains(p, "..") || filepath.IsAbs(p) {
				return nil, fmt.Errorf("-ceph-plugins: %q is not a directory under Ceph's plugin directory", p)
			}
			c.plugins = append(c.plugins, p)
		}
	}
	var secs int64
	if epoch != "" {
		var err error
		if secs, err = strconv.ParseInt(epoch, 10, 64); err != nil || secs < 0 {
			return nil, fmt.Errorf("-epoch (or SOURCE_DATE_EPOCH) %q is not a number of seconds", epoch)
		}
	}
	c.created = time.Unix(secs, 0).UTC()

	res, err := build(c)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(stdout, "wrote %s: granary %s (%s), %s/%s, tag %s, manifest %s\n",
		res.Dir, res.Version, c.variant, res.Platform.OS, res.Platform.Architecture, res.Tag, res.Digest)
	for _, l := range res.Layers {
		fmt.Fprintf(stdout, "  layer %-9s %s compressed, %s unpacked (%d files)\n", l.Name, size(l.Compressed), size(l.FileBytes), l.Files)
	}
	fmt.Fprintf(stdout, "  total           %s compressed, %s unpacked\n", size(res.Compressed()), size(res.Unpacked()))
	return res, nil
}

// size prints n bytes in MB (10^6) with the exact count.
func size(n int64) string {
	return fmt.Sprintf("%.1f MB (%d bytes)", float64(n)/1e6, n)
}
