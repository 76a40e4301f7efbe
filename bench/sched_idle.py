#!/usr/bin/env python3
"""Reads `perf sched timehist` output for bench/sched.sh and prints one row of its table.

usage: sched_idle.py TIMEHIST TARGET REQ_PER_S PROXY_PID MOCK_PID

timehist prints a line each time a thread leaves a core: the time it left, the core, the
thread (`name[tid/pid]`, or `<idle>` for the core's idle stretches), then the time it waited
to be woken, the time it waited runnable for the core (the scheduling delay), and the time it
ran, in milliseconds. A thread's stretch on the core ended at `time` and began `run` earlier;
it was runnable, queued on that core, for `delay` before that.
"""

import bisect
import collections
import re
import sys

LINE = re.compile(
    r"^\s*(\d+\.\d+)\s+\[(\d+)\]\s+(.+?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s*$"
)
THREAD = re.compile(r"^(.*)\[(\d+)(?:/(\d+))?\]$")


def main():
    path, target, rps, proxy_pid, mock_pid = sys.argv[1:6]
    rps = float(rps)
    roles = {proxy_pid: "proxy", mock_pid: "mock"}

    def role(name, pid):
        if pid in roles:
            return roles[pid]
        return "load generator" if name.startswith("oha") else "other"

    idle = []  # (core, start, end)
    runs = []  # (start, end, core, label, role)
    waits = []  # (start, end, core, role)
    first = last = None
    for line in open(path, encoding="utf-8", errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        end, core, who = float(m.group(1)), int(m.group(2)), m.group(3)
        delay, run = float(m.group(5)) / 1e3, float(m.group(6)) / 1e3
        start = end - run
        first = start if first is None else min(first, start)
        last = end if last is None else max(last, end)
        if who == "<idle>":
            idle.append((core, start, end))
            continue
        t = THREAD.match(who)
        name, pid = (t.group(1), t.group(3) or t.group(2)) if t else (who, "")
        r = role(name, pid)
        label = f"{r if r != 'other' else name}: {name}"
        runs.append((start, end, core, label, r))
        if delay > 0:
            waits.append((start - delay, start, core, r))
    if not idle or first is None:
        sys.exit("no idle stretches or no events in the recording")
    requests = rps * (last - first)
    per_request = 1e6 / requests

    runs.sort()
    waits.sort()
    run_starts = [r[0] for r in runs]
    wait_starts = [w[0] for w in waits]
    longest_wait = max((w[1] - w[0] for w in waits), default=0.0)
    longest_run = max((r[1] - r[0] for r in runs), default=0.0)

    def overlapping(items, starts, longest, core, s, e):
        # Items are (start, end, core, ...), sorted by start, with `starts` their starts; none
        # lasts longer than `longest`, so the search starts that far before `s`.
        i = bisect.bisect_left(starts, s - longest)
        for item in items[i:]:
            if item[0] >= e:
                break
            if item[2] != core and item[1] > s:
                yield item, max(s, item[0]), min(e, item[1])

    idle_total = 0.0
    waited_total = 0.0
    waited_by = collections.Counter()
    ran_meanwhile = collections.Counter()
    for core, s, e in idle:
        idle_total += e - s
        spans = sorted(
            (a, b, w[3]) for w, a, b in overlapping(waits, wait_starts, longest_wait, core, s, e)
        )
        if not spans:
            continue
        # The stretches of this idle time during which at least one thread waited on the other
        # core (the union of the waits: several threads often wait at once).
        union = []
        for a, b, r in spans:
            waited_by[r] += b - a
            if union and a <= union[-1][1]:
                union[-1][1] = max(union[-1][1], b)
            else:
                union.append([a, b])
        for a, b in union:
            waited_total += b - a
            # What the other core ran meanwhile.
            for run, x, y in overlapping(runs, run_starts, longest_run, core, a, b):
                ran_meanwhile[run[3]] += y - x
    ran_total = sum(ran_meanwhile.values()) or 1.0
    busiest = ", ".join(
        f"{label} {share / ran_total:.0%}" for label, share in ran_meanwhile.most_common(3)
    )
    proxy_longest = max(
        (r[1] - r[0] for r in runs if r[4] == "proxy"), default=0.0
    )

    def us(seconds):
        return seconds * per_request

    print(
        f"| {target} | {rps:.0f} | {us(idle_total):.1f} | {us(waited_total):.1f} | "
        f"{us(waited_by['proxy']):.1f} / {us(waited_by['mock']):.1f} / "
        f"{us(waited_by['load generator']):.1f} | {busiest} | {proxy_longest * 1e3:.2f} ms |"
    )


if __name__ == "__main__":
    main()
