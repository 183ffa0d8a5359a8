#!/usr/bin/env python3
"""Turn bench/run.sh results into a markdown table with bams/peer ratios and target checks."""
import sys
from collections import defaultdict

rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
changed = int(sys.argv[2])
val = defaultdict(dict)
rss = defaultdict(int)
for tool, step, a, b in rows:
    val[tool][step] = float(a)
    rss[tool] = max(rss[tool], int(b))
tools = ["bams", "restic", "borg"]
steps = [("init", "s"), ("tree1", "s"), ("tree2", "s"), ("tree3", "s"), ("img1", "s"), ("img2", "s"),
         ("restore", "s"), ("img1_added", "B"), ("img2_added", "B"), ("repo_size", "B")]
def fmt(v, unit):
    if unit == "B":
        return f"{v / 2**20:.1f} MiB"
    return f"{v:.2f} s"
print("| step | bams | restic | borg | bams/restic | bams/borg |")
print("| --- | --- | --- | --- | --- | --- |")
for step, unit in steps:
    cells = [fmt(val[t].get(step, float("nan")), unit) for t in tools]
    r = [val["bams"].get(step, 0) / val[t][step] if val[t].get(step) else float("nan") for t in ("restic", "borg")]
    print(f"| {step} | " + " | ".join(cells) + f" | {r[0]:.2f} | {r[1]:.2f} |")
print(f"| peak RSS | " + " | ".join(f"{rss[t] / 1024:.0f} MiB" for t in tools) +
      f" | {rss['bams'] / rss['restic']:.2f} | {rss['bams'] / rss['borg']:.2f} |")
print()
print(f"Image v1→v2 really changed: {changed / 2**20:.1f} MiB (differing 4 KiB blocks); "
      f"bams added {val['bams']['img2_added'] / 2**20:.1f} MiB = {val['bams']['img2_added'] / changed:.2f}x")
checks = [
    ("first tree backup <= 0.7x restic", val["bams"]["tree1"] <= 0.7 * val["restic"]["tree1"]),
    ("unchanged re-backup <= 0.5x restic", val["bams"]["tree2"] <= 0.5 * val["restic"]["tree2"]),
    ("restore <= 0.7x restic", val["bams"]["restore"] <= 0.7 * val["restic"]["restore"]),
    ("image v2 adds <= 1.3x changed bytes", val["bams"]["img2_added"] <= 1.3 * changed),
    ("repo no larger than restic's or borg's", val["bams"]["repo_size"] <= min(val["restic"]["repo_size"], val["borg"]["repo_size"])),
    ("peak RSS <= restic's", rss["bams"] <= rss["restic"]),
]
print()
for name, ok in checks:
    print(f"- {'PASS' if ok else 'FAIL'}: {name}")
