"""``pgtenantproxy demo --walkthrough``, run as a user runs it: a subprocess, its output read as text.

The walkthrough starts its own two clusters, so these tests share nothing with
the rest of the suite. They check what the walkthrough promises: every step's
heading, reads really moving to the tenant databases, every shop's writes
moving to its database at the cutover (one shop's coming back at the
rollback), a shop retired and restored, the final verification identical
with 0 failed queries (forward and reverse mirror drained), no secret in the output, the clusters removed
at the end, and Ctrl-C stopping it cleanly (exit 130, clusters removed).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from pgtenantproxy.walkthrough.steps import walkthrough_steps

COMMAND = [sys.executable, "-m", "pgtenantproxy", "demo", "--walkthrough", "--fast", "--shops", "4",
           "--port", "0"]
TIMEOUT_S = 180  # a bound for a hung run, not a speed check (it takes well under a minute)
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}

#: What a leaked secret would look like: a libpq password, a 64-hex-digit key (or any long hex run),
#: a ``secrets.token_urlsafe`` password (a long run of base64url characters mixing cases and digits).
LEAKS = (
    re.compile(r"password\s*=", re.IGNORECASE),
    re.compile(r"PGPASSWORD"),
    re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    re.compile(r"(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{20,}"),
)


def data_dirs(out: str) -> list[Path]:
    dirs = [Path(p) for p in re.findall(r"\(data in (\S+)\)", out)]
    assert len(dirs) == 2, out
    return dirs


def assert_removed(dirs: list[Path]) -> None:
    """The directories are gone and no process (a postmaster) still runs from them."""
    assert not any(d.exists() for d in dirs), dirs
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        assert not any(str(d) in text for d in dirs), text


def assert_no_leak(text: str) -> None:
    for pattern in LEAKS:
        found = pattern.search(text)
        assert found is None, f"looks like a secret in the output: {found.group(0)!r}"


def test_walkthrough_walks_every_phase_and_ends_with_every_shop_identical() -> None:
    result = subprocess.run(COMMAND, capture_output=True, text=True, timeout=TIMEOUT_S, env=ENV, check=False)
    out, err = result.stdout, result.stderr
    assert result.returncode == 0, out + err
    assert "HandyShop sample loaded: 4 shops" in out
    steps = walkthrough_steps()
    positions = [out.find(f"Step {n}/{len(steps)}: {step.title}") for n, step in enumerate(steps, 1)]
    assert all(p >= 0 for p in positions), (positions, out)
    assert positions == sorted(positions)
    assert out.count("done: ") == len(steps)
    assert "shops: 4 mirroring" in out  # the backfill moved every shop on to mirroring
    cutover = out[out.index(f"Step 9/{len(steps)}"):out.index(f"Step 10/{len(steps)}")]
    assert "done: 4 shops cut over" in cutover and "write pause P50" in cutover
    written = re.search(r"shop writes: ([\d,]+) on unified, ([\d,]+) on the tenant databases", cutover)
    assert written is not None and written.group(1) == "0" and int(written.group(2)) > 0, cutover
    assert "done: shop 1 is back in phase reads_on_tenant" in out
    assert re.search(r"done: shop 4 retired: [\d,]+ rows archived", out), out
    # after retirement the load still uses shop 4, and reads over every shop stay whole
    assert "the load keeps reading and writing shop 4" in out
    assert re.search(r"done: after retirement a report over 4 shops \([\d,]+ repairs\) matches", out), out
    assert "done: shop 4 restored from" in out and "verification identical" in out
    end = out[out.index("The end:"):]
    assert "mirror drained" in end and "reverse mirror drained" in end
    # 3 tenant tables and the shop's copy of the reference table device_models
    assert len(re.findall(r"│ reads_on_tenant │ 4 +│ [\d,]+ +│ [\d,]+ +│ identical │", end)) == 1, end
    assert len(re.findall(r"│ tenant_primary +│ 4 +│ [\d,]+ +│ [\d,]+ +│ identical │", end)) == 3, end
    assert "Every shop verified identical" in end and "0 failed queries." in end
    totals = re.search(r"totals: [\d,]+ queries .*?, (\d+) failed; shop reads: ([\d,]+) on unified, "
                       r"([\d,]+) on tenant", end, re.DOTALL)
    assert totals is not None, end
    assert totals.group(1) == "0"
    assert int(totals.group(3).replace(",", "")) > 0  # reads did move to the tenant databases
    assert_no_leak(out)
    assert_no_leak(err)
    assert_removed(data_dirs(out))


def test_ctrl_c_stops_the_walkthrough_cleanly_and_removes_the_clusters() -> None:
    proc = subprocess.Popen(COMMAND, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "Step 4/" in line:  # the backfill is starting, the load is running
                break
        assert any("Step 4/" in line for line in seen), "".join(seen)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(seen) + rest
    assert proc.returncode == 130, out + err
    assert "interrupted" in out and "throwaway clusters removed" in out
    assert_removed(data_dirs(out))
    assert "Traceback" not in err, err
    assert_no_leak(out + err)
