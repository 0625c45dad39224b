#!/usr/bin/env python3
"""Compare two kodev binaries on the dev loop's edit→pushed time, alternated on one machine.

A single benchmark run moves by about ±0.05× of the floor, more than most changes are worth.
This runs both binaries as `kodev dev` side by side (each watching its own copy of the app)
and alternates them, round after round, each edit paired with a bare `go build` of the same
kind of edit run just before it. What the two medians differ by is then the change, not the
minute it was measured in.

    cargo build --release && cp target/release/kodev /tmp/kodev-old
    # ... make the change ...
    cargo build --release
    python3 benches/ab.py --a /tmp/kodev-old --b target/release/kodev --app hello --rounds 30

With `--one-shot`, the same for one-shot `kodev build`s after each edit.
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
import subprocess

import bench


def start_dev(kodev, app, host, repo, cache, extra_env):
    env = dict(os.environ, NO_COLOR="1", KODEV_CACHE_DIR=str(cache),
               PATH=os.environ["PATH"] + ":/usr/local/go/bin", **extra_env)
    proc = subprocess.Popen([kodev, "dev", "--no-tui", "--output", "json", "-d", f"{host}/{repo}", "-t", "dev"],
                            cwd=app, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    lines = []
    threading.Thread(target=lambda: [lines.append(line) for line in proc.stdout], daemon=True).start()
    return proc, lines


def wait_for(lines, since, event, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in lines[since:]:
            if f'"{event}"' in line:
                return json.loads(line)
        time.sleep(0.005)
    raise SystemExit(f"kodev dev did not report {event}")


def settle_relinks(lines, since):
    """bench.settle_relinks over this script's raw event lines."""
    def wait(pred, start):
        deadline = time.time() + 300
        while time.time() < deadline:
            for line in lines[start:]:
                if pred(event := json.loads(line)):
                    return None, event
            time.sleep(0.005)
        raise SystemExit("kodev dev did not report relink_checked")
    bench.settle_relinks([(None, json.loads(line)) for line in lines], since, wait)


def event_time(event):
    return datetime.datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()


def one_shot_rounds(args, apps, editors, binaries, registry, work, platforms, out):
    """One-shot `kodev build`s of a and b, alternated, each after its own edit and paired with a
    floor build of the same kind of edit run just before it. Each binary builds its own copy of
    the app into its own kodev cache and repository, once unmeasured first (a warm build is a
    developer's next one: kodev's cache and the registry hold the last build of the image)."""
    def build(name):
        kodev, extra = binaries[name]
        env = dict(os.environ, KODEV_CACHE_DIR=str(work / f"cache-{name}"),
                   PATH=os.environ["PATH"] + ":/usr/local/go/bin", **dict(entry.split("=", 1) for entry in extra))
        editors[name].edit()
        started = time.perf_counter()
        subprocess.run([kodev, "build", "-d", f"{registry.host}/{name}", "-t", "ab"], cwd=apps[name], env=env,
                       check=True, capture_output=True)
        return time.perf_counter() - started

    for name in binaries:
        build(name)
    times, ratios = {"a": [], "b": []}, {"a": [], "b": []}
    for round_ in range(args.rounds):
        for name in (("a", "b") if round_ % 2 == 0 else ("b", "a")):
            time.sleep(0.5)
            editors["floor"].edit()
            floor = bench.go_floor(apps["floor"], platforms, out)
            time.sleep(0.5)
            times[name].append(build(name))
            ratios[name].append(times[name][-1] / floor)
        print(f"round {round_ + 1}: a {times['a'][-1]:.3f}s  b {times['b'][-1]:.3f}s", flush=True)
    for name in ("a", "b"):
        t, r = times[name], ratios[name]
        print(f"{name}: one-shot median {statistics.median(t):.3f}s  mean {statistics.mean(t):.3f}s  "
              f"build/floor median {statistics.median(r):.3f}  ({len(t)} builds)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=True, help="the kodev binary to compare against")
    ap.add_argument("--b", required=True, help="the kodev binary with the change")
    ap.add_argument("--app", choices=["hello", "large", "ko-src"], default="hello")
    ap.add_argument("--edit", choices=["main", "lib"], default="main",
                    help="edit main, or a package main imports (large and ko-src, see bench.LIB_PACKAGES)")
    ap.add_argument("--platforms", type=int, choices=[1, 2], default=1)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--a-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment for a's kodev only (e.g. KODEV_RELINK=0 to compare with one binary)")
    ap.add_argument("--b-env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--one-shot", action="store_true",
                    help="compare one-shot `kodev build`s after each edit instead of `kodev dev`")
    args = ap.parse_args()
    platforms = ["linux/amd64", "linux/arm64"][:args.platforms]
    work = Path(tempfile.mkdtemp(prefix="kodev-ab-"))
    registry = bench.Registry(work)
    procs = []
    try:
        base = bench.make_base(work, registry)
        source = work / "source"
        if args.app == "hello":
            shutil.copytree(bench.ROOT / "examples/hello", source)
            main_go = source / "main.go"
            main_go.write_text(main_go.read_text().replace("func main() {", "// edit 0\n\nfunc main() {", 1))
        elif args.app == "large":
            bench.generate_large_app(source)
        elif not bench.copy_ko_source(source):
            raise SystemExit("ko's source cannot be had")
        if args.edit == "lib":
            if args.app not in bench.LIB_PACKAGES:
                raise SystemExit(f"{args.app} has no package to edit besides main")
            bench.LibEditor.add(source, *bench.LIB_PACKAGES[args.app])
        bench.write_skaffold(source, base, platforms)
        apps = {}
        for name in ("floor", "a", "b"):
            apps[name] = work / name
            shutil.copytree(source, apps[name])
        out = work / "floor-out"
        out.mkdir()
        bench.go_floor(apps["floor"], platforms, out)  # warm the Go build cache
        if args.edit == "lib":
            editors = {name: bench.LibEditor(app, bench.LIB_PACKAGES[args.app][0]) for name, app in apps.items()}
        else:
            editors = {name: bench.Editor(app) for name, app in apps.items()}
        binaries = {"a": (Path(args.a).resolve(), args.a_env), "b": (Path(args.b).resolve(), args.b_env)}
        if args.one_shot:
            one_shot_rounds(args, apps, editors, binaries, registry, work, platforms, out)
            return
        for name, (kodev, extra) in binaries.items():
            extra_env = dict(entry.split("=", 1) for entry in extra)
            procs.append((name, *start_dev(kodev, apps[name], registry.host, name, work / f"cache-{name}", extra_env)))
        for _, _, lines in procs:
            wait_for(lines, 0, "watching")
        ratios = {"a": [], "b": []}
        for round_ in range(args.rounds):
            # Alternate which goes first, so neither always follows the other.
            for name, _, lines in (procs if round_ % 2 == 0 else procs[::-1]):
                # Either kodev may still run go in the background (a recipe being recorded).
                for _, proc, _ in procs:
                    bench.wait_for_no_children(proc.pid)
                time.sleep(0.5)
                editors["floor"].edit()
                floor = bench.go_floor(apps["floor"], platforms, out)
                time.sleep(0.5)
                since = len(lines)
                started = time.time()
                editors[name].edit()
                pushed = wait_for(lines, since, "pushed")
                ratios[name].append((event_time(pushed) - started) / floor)
                settle_relinks(lines, since)
            print(f"round {round_ + 1}: a {ratios['a'][-1]:.3f}  b {ratios['b'][-1]:.3f}", flush=True)
        for name in ("a", "b"):
            r = ratios[name]
            print(f"{name}: dev/floor median {statistics.median(r):.3f}  mean {statistics.mean(r):.3f}  "
                  f"(stdev {statistics.stdev(r):.3f}, {len(r)} edits)")
    finally:
        for _, proc, _ in procs:
            try:
                proc.stdin.write("q\n")
                proc.stdin.flush()
                proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
