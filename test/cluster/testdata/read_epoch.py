#!/usr/bin/env python3
"""Read every file of a list under a root, whole, with Python threads, as a
data loader's workers do (open, read, close), and print the files per
second.

    read_epoch.py ROOT LIST [--threads 8] [--rounds 3] [--buffering -1]

--buffering is open()'s: -1 (the default of open(path, "rb")) makes
Python before 3.14 ask each file whether it is a terminal (an ioctl, which
FUSE sends to the file system's server); 0 does not.
"""

import argparse
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("list", help="a file of paths under root, one a line")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--buffering", type=int, default=-1)
    a = p.parse_args()
    with open(a.list) as f:
        names = f.read().split()

    def one(name):
        with open(os.path.join(a.root, name), "rb", buffering=a.buffering) as f:
            return len(f.read())

    start = time.monotonic()
    with ThreadPoolExecutor(a.threads) as ex:
        total = sum(ex.map(one, names * a.rounds))
    took = time.monotonic() - start
    print(f"{len(names) * a.rounds / took:.0f} files/s, {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
