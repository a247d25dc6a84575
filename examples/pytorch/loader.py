#!/usr/bin/env python3
"""Iterate a PyTorch DataLoader over an ImageFolder-style tree and print the
samples per second of each epoch.

It trains nothing and decodes nothing: a sample is the file's raw bytes, so
what it measures is what the storage behind the path (a granary mount, a
local disk, a ceph-fuse mount) gives a data loader with N workers.

    python3 examples/pytorch/loader.py /mnt/granary/imagenet/train --epochs 3 --workers 8
"""

import argparse
import sys
import time

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import DatasetFolder


def read_bytes(path):
    # Unbuffered: with open()'s default buffering, Python before 3.14 asks
    # every file it opens whether it is a terminal (an ioctl), and FUSE
    # sends that to the file system's server: a round trip per sample on any
    # FUSE mount, granary's or ceph-fuse's (0.50 of a local directory's rate
    # warm, against 0.96 unbuffered: BenchmarkMountSmallWarmPython).
    with open(path, "rb", buffering=0) as f:
        return f.read()


def count(batch):
    """Collate a batch of (bytes, class) into (bytes in it, samples in it)."""
    return sum(len(data) for data, _ in batch), len(batch)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", help="a directory of class directories of samples")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--workers", type=int, default=4, help="DataLoader num_workers")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--extensions", default=".JPEG,.jpg,.jpeg,.png", help="comma-separated")
    args = p.parse_args()
    if args.epochs < 1 or args.workers < 0 or args.batch_size < 1:
        p.error("--epochs and --batch-size must be at least 1, --workers at least 0")

    data = DatasetFolder(args.root, loader=read_bytes, extensions=tuple(args.extensions.split(",")))
    print(f"{len(data)} samples in {len(data.classes)} classes under {args.root}", flush=True)
    # One loader for every epoch, as a training loop has: its workers are
    # started once (persistent), and each epoch draws a new shuffled order
    # from the seeded generator.
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        persistent_workers=args.workers > 0, collate_fn=count,
                        generator=torch.Generator().manual_seed(1))
    for epoch in range(1, args.epochs + 1):
        start = time.monotonic()
        samples = nbytes = 0
        for b, n in loader:
            samples += n
            nbytes += b
        took = time.monotonic() - start
        print(f"epoch {epoch}: {samples} samples, {nbytes / 1e6:.1f} MB in {took:.2f} s: "
              f"{samples / took:.0f} samples/s, {nbytes / 1e6 / took:.1f} MB/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
