"""Bytes that really changed between two disk images: their differing 4 KiB blocks.

  python3 bench/changed_blocks.py A.img B.img
"""
import sys

a, b = open(sys.argv[1], "rb"), open(sys.argv[2], "rb")
n = 0
while True:
    x, y = a.read(1 << 20), b.read(1 << 20)
    if not x and not y:
        break
    for i in range(0, max(len(x), len(y)), 4096):
        if x[i:i + 4096] != y[i:i + 4096]:
            n += 4096
print(n)
