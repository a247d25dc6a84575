// Command granary is a distributed cache for AI-training data in front of
// CephFS, S3 and POSIX storage. All logic lives in internal/; this is the
// entry point only.
package main

import (
	"os"

	"github.com/granary-cache/granary/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
