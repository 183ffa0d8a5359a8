#!/usr/bin/env python3
"""Turn bench/run.sh results into a markdown table with bams/peer ratios and target checks."""
import statistics
import sys
from collections import defaultdict

rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
changed = int(sys.argv[2])
runs = defaultdict(lambda: defaultdict(list))
step_rss = defaultdict(dict)  # tool -> step -> peak KiB
rss = defaultdict(int)
for tool, step, a, b in rows:
    runs[tool][step].append(float(a))
    step_rss[tool][step] = max(step_rss[tool].get(step, 0), int(b))
    rss[tool] = max(rss[tool], int(b))
# A step run several times (the short ones, where one stall would move a single run) counts
# with its median.
val = {tool: {step: statistics.median(v) for step, v in steps.items()} for tool, steps in runs.items()}
tools = ["bams", "restic", "borg"]
steps = [("tree0", "s"), ("init", "s"), ("tree1", "s"), ("tree2", "s"), ("tree3", "s"), ("img1", "s"), ("img2", "s"),
         ("restore", "s"), ("img1_added", "B"), ("img2_added", "B"), ("repo_size", "B")]
names = {"tree0": "first tree backup, cold cache", "tree1": "first tree backup, warm", "tree2": "unchanged re-backup",
         "tree3": "2% of files changed", "img1": "image v1 (cold)", "img2": "image v2 (cold)", "restore": "restore tree",
         "img1_added": "image v1 added", "img2_added": "image v2 added", "repo_size": "repository"}
def fmt(v, unit):
    if unit == "B":
        return f"{v / 2**20:.1f} MiB"
    return f"{v:.2f} s"
print("| step | bams | restic | borg | bams/restic | bams/borg |")
print("| --- | --- | --- | --- | --- | --- |")
for step, unit in steps:
    cells = [fmt(val[t].get(step, float("nan")), unit) for t in tools]
    r = [val["bams"].get(step, 0) / val[t][step] if val[t].get(step) else float("nan") for t in ("restic", "borg")]
    print(f"| {names.get(step, step)} | " + " | ".join(cells) + f" | {r[0]:.2f} | {r[1]:.2f} |")
print(f"| peak RSS | " + " | ".join(f"{rss[t] / 1024:.0f} MiB" for t in tools) +
      f" | {rss['bams'] / rss['restic']:.2f} | {rss['bams'] / rss['borg']:.2f} |")
print()
timed = [s for s, u in steps if u == "s" and s in step_rss["bams"] and step_rss["restic"].get(s)]
print("| peak RSS per step | bams | restic | bams/restic |")
print("| --- | --- | --- | --- |")
for s in timed:
    print(f"| {names.get(s, s)} | {step_rss['bams'][s] / 1024:.0f} MiB | {step_rss['restic'][s] / 1024:.0f} MiB | "
          f"{step_rss['bams'][s] / step_rss['restic'][s]:.2f} |")
worst_rss = max(step_rss["bams"][s] / step_rss["restic"][s] for s in timed)
repeated = sorted({s for t in runs for s, v in runs[t].items() if len(v) > 1})
if repeated:
    print(f"\nMedian of {max(len(runs[t][s]) for t in runs for s in repeated)} runs: {', '.join(names.get(s, s) for s in repeated)}.")
print()
print(f"Image v1→v2 really changed: {changed / 2**20:.1f} MiB (differing 4 KiB blocks); "
      f"bams added {val['bams']['img2_added'] / 2**20:.1f} MiB = {val['bams']['img2_added'] / changed:.2f}x")
checks = [
    ("first tree backup, cold <= 0.45x restic", val["bams"]["tree0"] <= 0.45 * val["restic"]["tree0"]),
    ("first tree backup, warm <= 0.3x restic", val["bams"]["tree1"] <= 0.3 * val["restic"]["tree1"]),
    ("unchanged re-backup <= 0.25x restic", val["bams"]["tree2"] <= 0.25 * val["restic"]["tree2"]),
    ("images <= 0.8x borg", max(val["bams"]["img1"] / val["borg"]["img1"], val["bams"]["img2"] / val["borg"]["img2"]) <= 0.8),
    ("restore <= 0.5x restic", val["bams"]["restore"] <= 0.5 * val["restic"]["restore"]),
    ("image v2 adds <= 1.3x changed bytes", val["bams"]["img2_added"] <= 1.3 * changed),
    ("repository <= 0.9x restic's", val["bams"]["repo_size"] <= 0.9 * val["restic"]["repo_size"]),
    (f"peak RSS <= 0.6x restic's in every step (worst {worst_rss:.2f})", worst_rss <= 0.6),
]
print()
for name, ok in checks:
    print(f"- {'PASS' if ok else 'FAIL'}: {name}")
