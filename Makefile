# Release builds: a pure-Go binary and one with native CephFS (cgo, needs
# Debian's libcephfs-dev). The version and commit are stamped in.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short HEAD 2>/dev/null)
LDFLAGS := -s -w -X github.com/granary-cache/granary/internal/version.Version=$(VERSION) \
	-X github.com/granary-cache/granary/internal/version.Commit=$(COMMIT)
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all granary granary-cephfs image image-static image-cephfs test bench generate
all: granary granary-cephfs

granary:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/granary ./cmd/granary

granary-cephfs:
	CGO_ENABLED=1 go build -trimpath -tags cephfs -ldflags '$(LDFLAGS)' -o bin/granary-cephfs ./cmd/granary

# Container images as OCI image layouts, without a container daemon
# (build/image/README.md): bin/image-static and bin/image-cephfs. Every file
# and the image carry the last commit's time, so a commit gives the same
# image twice.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
image: image-static image-cephfs

image-static: granary
	cd build/image && go run . -variant static -binary ../../bin/granary -out ../../bin/image-static -force -epoch $(SOURCE_DATE_EPOCH)

image-cephfs: granary-cephfs
	cd build/image && go run . -variant cephfs -binary ../../bin/granary-cephfs -out ../../bin/image-cephfs -force -epoch $(SOURCE_DATE_EPOCH)

test:
	bash test/run.sh

bench:
	bash test/bench.sh

# Deep-copy methods, CRDs and the operator's RBAC from the Go API
# (controller-gen, built by test/lib.sh).
generate:
	bash test/generate.sh
