#!/usr/bin/env python3
"""Adds up the results in `meson test --verbose` logs and prints one closing line.

Counts Check runners ("NN%: Checks: C, Failures: F, Errors: E") and pytest
("N passed, M failed, K skipped"), and meson-level failures of any other test
(crash, timeout). Prints 'N passed, N failed' (', N skipped' when some were).

Also reads the fuzz and soak passes of deploy/quickstart.sh: tests/fuzz/run.sh's
closing "fuzz: N passed, M failed" (one per target) and tools/soak.py's
"soak: PASSED|FAILED (...)" (one test). A log whose file name contains "fuzz"
or "soak" without that closing line counts as one failure (the pass broke
before its verdict). Their results are added to the totals and named after
them: "N passed, M failed (fuzz: 4 passed, 0 failed; soak: passed)".
"""
import re
import sys

passed = failed = skipped = 0
extra = []
for path in sys.argv[1:]:
    try:
        text = open(path, errors="replace").read()
    except OSError as e:
        print(f"cannot read {path}: {e}", file=sys.stderr)
        failed += 1
        continue
    for m in re.finditer(r"\d+%: Checks: (\d+), Failures: (\d+), Errors: (\d+)", text):
        c, f, e = map(int, m.groups())
        passed += c - f - e
        failed += f + e
    name = path.rsplit("/", 1)[-1]
    fz = re.search(r"^fuzz: (\d+) passed, (\d+) failed", text, re.M)
    sk = re.search(r"^soak: (PASSED|FAILED)", text, re.M)
    if fz:
        passed += int(fz.group(1))
        failed += int(fz.group(2))
        extra.append(f"fuzz: {fz.group(1)} passed, {fz.group(2)} failed")
        continue
    if sk:
        ok = sk.group(1) == "PASSED"
        passed += ok
        failed += not ok
        extra.append("soak: " + ("passed" if ok else "FAILED"))
        continue
    if "fuzz" in name or "soak" in name:
        failed += 1
        extra.append(("fuzz" if "fuzz" in name else "soak") + ": no verdict (see " + path + ")")
        continue
    # pytest's closing line, decorated ("=== 3 passed in 1.2s ===") or not (-q)
    for m in re.finditer(r"^(?:=+ )?(\d+ (?:passed|failed|skipped|errors?|xfailed|xpassed)\b.*) in [\d.]+s",
                         text, re.M):
        line = m.group(1)
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", line):
            if what == "passed":
                passed += int(n)
            elif what == "skipped":
                skipped += int(n)
            else:
                failed += int(n)
    # meson's own verdict: a runner that crashed or timed out prints no summary.
    m = re.search(r"^Fail:\s+(\d+)", text, re.M)
    t = re.search(r"^Timeout:\s+(\d+)", text, re.M)
    crashed = (int(m.group(1)) if m else 0) + (int(t.group(1)) if t else 0)
    reported = len(re.findall(r"Failures: [1-9]|Errors: [1-9]|\d+ failed", text))
    if crashed > reported:
        failed += crashed - reported

line = f"{passed} passed, {failed} failed"
if skipped:
    line += f", {skipped} skipped"
if extra:
    line += " (" + "; ".join(extra) + ")"
print(line)
