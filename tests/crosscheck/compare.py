"""Compares `oim bench` (its JSON) with inference-perf (its per-stage lifecycle reports) on the
same simulator run: TTFT p50, ITL p50 and output tokens/s per concurrency. Prints a table and
exits 1 when any figure differs by more than the tolerance."""
import json
import sys

# Usage: compare.py REPORTS TOLERANCE OIM_JSON... (one oim bench result per inference-perf stage, in order)
reports, tolerance, oim_jsons = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
levels = [level for path in oim_jsons for level in json.load(open(path))["levels"]]
rows, worst = [], 0.0
for stage, level in enumerate(levels):
    ip = json.load(open(f"{reports}/stage_{stage}_lifecycle_metrics.json"))["successes"]
    pairs = [
        ("TTFT p50 ms", level["ttftMs"]["p50"], ip["latency"]["time_to_first_token"]["median"] * 1000),
        ("ITL p50 ms", level["itlMs"]["p50"], ip["latency"]["inter_token_latency"]["median"] * 1000),
        ("output tokens/s", level["outputTokensPerSec"], ip["throughput"]["output_tokens_per_sec"]),
    ]
    for name, a, b in pairs:
        diff = abs(a - b) / max(abs(b), 1e-9)
        worst = max(worst, diff)
        rows.append((level["concurrency"], name, a, b, diff))
print(f"{'conc':>4}  {'metric':<16} {'oim bench':>10} {'inference-perf':>15} {'diff':>7}")
for c, name, a, b, d in rows:
    print(f"{c:>4}  {name:<16} {a:>10.1f} {b:>15.1f} {d:>6.1%}{'  <-- over' if d > tolerance else ''}")
print(f"largest difference {worst:.1%} (tolerance {tolerance:.0%})")
sys.exit(1 if worst > tolerance else 0)
