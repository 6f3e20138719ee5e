"""Log mining throughput: data.py's loop against the numpy engine (fastlog.py) on one large Onion-format log,
and the bz2 decompression rate that bounds a pass over the real, compressed Music4All-Onion file.

    python benchmarks/bench_mining.py [--dir /tmp/bench_mining] [--replicas 10] [--small 2]

The data is generated once and cached in DIR (outside the repository; delete it to regenerate):
  world/    `world.py generate --tracks 2000 --users 8000` (about 1M events), its catalogue and id tables;
  rvq/      `rvq.py train` on that catalogue (the Semantic IDs the SFT and preference data use);
  rvq_logs/ the same IDs, from `rvq.py train --logs onion_<R>.tsv` (as the Makefile runs it): it also records
            the log's time split (split.json), which `data.py sft` then reuses instead of its own split pass;
  onion_<R>.tsv   the world's log R times over: replica k renames each listener to k * 1,000,000 + id and maps
            every track to another catalogue track by a permutation drawn for k (the same id tables join it),
            so the replicas are different listeners with the same habits; newest first, as the real file.
Then, each command in its own process (wall time with imports and writing, CPU seconds, peak RSS from wait4):
  `data.py sft` (two passes: the time split, then transitions, sessions and co-listening; and, on the numpy
  engine, once more with rvq_logs/: one pass, the split read from rvq.py's split.json) and `data.py prefs`
  (sessions, dwell, labels, pairs, dedupe; uncapped as benchmarks/bench_prefs.py runs it, so every pair is
  written, and capped as the Makefile runs it) with --engine loop and --engine numpy on onion_<R>.tsv; their
  output files are compared byte for byte (config.json records the engine; report.json's timing fields differ;
  the one-pass sft's meta.json names rvq_logs/ where the others name rvq/).
  The numpy engine also runs `data.py sft` keeping samples of 1,000 (the 200,000 next-track examples and sessions
  it keeps by default cost about the same time at any log length: the examples written), so its passes show the
  per-event rate of a long log, and `data.py prefs` on onion_<small>.tsv, so its peak RSS on two log
  lengths shows the memory bound.
bz2: the first --bz2-events events are compressed (bzip2 -9, as the real file) and decompressed by Python's bz2
module and by `bzip2 -dc` / `lbzip2 -dc` where installed: MB/s of output, events/s, and the hours the real file's
252,984,396 events (2.2 GB compressed) take at those rates; then the numpy engine's `data.py prefs` reads the
.bz2 directly, with its three threads and with one (FASTLOG_THREADS=0): what the second core brings when
decompression is the slowest stage (compare the short log's row, about as many events uncompressed).
"""
import argparse
import bz2
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import harness  # first: it puts the repository root on sys.path for the imports below
import formats
import sessions
from common import UserError, atomic_open, read_json, run_main, write_json

# -----------------------------------------------------------------------------
DIR: str = "/tmp/bench_mining"       # generated logs and outputs (large: ~45 MB per million events)
TRACKS: int = 2000                   # the Makefile's world
USERS: int = 8000                    # about 1M events per replica (world.py's 125 plays per listener)
REPLICAS: int = 10                   # the large log: about 10M events
SMALL: int = 2                       # a shorter log for the memory bound (numpy engine only)
BZ2_EVENTS: int = 2_000_000          # events compressed for the bz2 figures
SEED: int = 0
CAPS = ("--max-train", "640", "--max-val", "96", "--max-test", "700")   # the Makefile's preference caps
REAL_EVENTS: int = 252_984_396       # Music4All-Onion userid_trackid_timestamp.tsv.bz2 (../shared/data/SOURCES.md)
REAL_BZ2_BYTES: float = 2.2e9
# -----------------------------------------------------------------------------


def py(*args):
    subprocess.run([sys.executable, *args], check=True, cwd=harness.ROOT)


def prepare(d):
    world, rvq_dir = os.path.join(d, "world"), os.path.join(d, "rvq")
    if not os.path.exists(os.path.join(world, "world_config.json")):
        py("world.py", "generate", "--out", world, "--tracks", str(TRACKS), "--users", str(USERS),
           "--seed", str(SEED))
    if not os.path.exists(os.path.join(rvq_dir, "rvq_config.json")):
        py("rvq.py", "train", "--catalog", os.path.join(world, "catalog.csv"), "--out", rvq_dir,
           "--codebook-size", "32", "--seed", str(SEED))
    return world, rvq_dir


def prepare_split(d, world, log):
    """rvq_logs/: `rvq.py train --logs log`, rerun when its split.json no longer matches the log (regenerated)."""
    rvq_dir, catalog = os.path.join(d, "rvq_logs"), os.path.join(world, "catalog.csv")
    ids = ["--id-information", os.path.join(world, "id_information.csv"),
           "--id-metadata", os.path.join(world, "id_metadata.csv")]
    inputs = sessions.split_inputs(log, catalog, ids[1], ids[3])
    if sessions.recorded_split(rvq_dir, inputs)[0] is None:
        py("rvq.py", "train", "--catalog", catalog, "--out", rvq_dir, "--codebook-size", "32", "--seed", str(SEED),
           "--logs", log, *ids)
    return rvq_dir


def replicate(world, path, replicas):
    """The world's log `replicas` times over (see the module docstring); returns the number of events."""
    info = path + ".json"
    if os.path.exists(path) and os.path.exists(info):
        return read_json(info)["events"]
    ids = sorted(formats.load_id_metadata(os.path.join(world, "id_metadata.csv")))
    with open(os.path.join(world, "userid_trackid_timestamp.tsv"), "rb") as f:
        header, lines = f.readline(), f.read().split(b"\n")[:-1]
    users, tracks, rest = zip(*(line.split(b"\t", 2) for line in lines))
    user_ids = [int(u) for u in users]
    n = 0
    with atomic_open(path, "wb") as out:
        out.write(header)
        for k in range(replicas):
            perm = np.random.default_rng([SEED, k]).permutation(len(ids))
            remap = {ids[i].encode(): ids[j].encode() for i, j in enumerate(perm)} if k else None
            out.write(b"".join(b"%d\t%s\t%s\n" % (k * 1_000_000 + u, remap[t] if k else t, r)
                               for u, t, r in zip(user_ids, tracks, rest)))
            n += len(lines)
    write_json(info, {"events": n})
    return n


def measured(cmd, name, env=None):
    """Run one command: (wall s, CPU s of user + system, peak RSS MiB, its stdout), its own rusage from wait4."""
    t = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, cwd=harness.ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                                stdout=log)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        log.seek(0)
        text = log.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise UserError(f"{name} failed; its output is above")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text


def same_outputs(a, b, rvq_paths=False):
    """True when every output file of folders a and b is the same (config.json and the timing fields aside;
    rvq_paths: meta.json's paths to the rvq folder too)."""
    names = sorted(os.listdir(a))
    if names != sorted(os.listdir(b)):
        return False
    for name in names:
        if name == "config.json":
            continue
        pa, pb = os.path.join(a, name), os.path.join(b, name)
        if name == "report.json":
            x, y = read_json(pa), read_json(pb)
            for r in (x, y):
                r.pop("seconds"), r.pop("events_per_second")
            if x != y:
                return False
        elif name == "meta.json" and rvq_paths:
            x, y = read_json(pa), read_json(pb)
            for r in (x, y):
                r.pop("rvq"), r.pop("semantic_ids")
            if x != y:
                return False
        elif not filecmp.cmp(pa, pb, shallow=False):   # block by block: the uncapped pairs are GBs
            return False
    return True


def bz2_head(d, log, events):
    """The log's header and first `events` events, packed once with bzip2 -9 (Python's bz2 without it)."""
    path = os.path.join(d, f"onion_head_{events}.tsv.bz2")
    if os.path.exists(path):
        return path
    tool = shutil.which("bzip2")
    with open(log, "rb") as f, open(path + ".tmp", "wb") as out:
        proc = subprocess.Popen([tool, "-9", "-c"], stdin=subprocess.PIPE, stdout=out) if tool else None
        sink = proc.stdin if proc else bz2.BZ2File(out, "wb", compresslevel=9)
        for _ in range(events + 1):
            sink.write(f.readline())
        sink.close()
        if proc and proc.wait() != 0:
            raise UserError("bzip2 failed")
    os.replace(path + ".tmp", path)
    return path


def bz2_figures(path, events):
    """(plain bytes, packed bytes, [(decoder, seconds)]) of decompressing the .bz2 of `events` events."""
    plain, rows = 0, []
    t = time.perf_counter()
    with bz2.open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            plain += len(chunk)
    rows.append(("python bz2 module", time.perf_counter() - t))
    for tool in ("bzip2", "lbzip2", "pbzip2"):
        if shutil.which(tool):
            t = time.perf_counter()
            subprocess.run([tool, "-dc", path], stdout=subprocess.DEVNULL, check=True)
            rows.append((f"{tool} -dc", time.perf_counter() - t))
    return plain, os.path.getsize(path), rows


def prepare_all(args):
    """In a child process (the parent stays small: Linux hands a parent's peak RSS on to the children it starts,
    so a large parent would inflate every peak measured): the world, its IDs, the logs, the .bz2."""
    d = os.path.abspath(args.dir)
    world, _ = prepare(d)
    logs = {r: os.path.join(d, f"onion_{r}.tsv") for r in sorted({args.small, args.replicas})}
    for r, path in logs.items():
        replicate(world, path, r)
    prepare_split(d, world, logs[args.replicas])
    bz2_head(d, logs[args.replicas], args.bz2_events)


def main(argv=None):
    p = argparse.ArgumentParser(description="data.py loop vs numpy engine on a large Onion log; bz2 rates")
    p.add_argument("--dir", default=DIR, help="generated data and outputs (not in the repository)")
    p.add_argument("--replicas", type=int, default=REPLICAS, help="copies of the ~1M-event world log")
    p.add_argument("--small", type=int, default=SMALL, help="replicas of the shorter log (numpy engine's memory)")
    p.add_argument("--bz2-events", type=int, default=BZ2_EVENTS,
                   help="first events of the large log compressed (bzip2 -9, as the real file) for the bz2 figures "
                        "(default %(default)s)")
    p.add_argument("--skip-loop", action="store_true", help="numpy engine only (no loop runs, no comparison)")
    p.add_argument("--out", default=None, help="JSON of the figures (default DIR/bench_mining.json)")
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)   # the child that makes the data
    args = p.parse_args(argv)
    if args.prepare:
        return prepare_all(args)
    d = os.path.abspath(args.dir)
    os.makedirs(d, exist_ok=True)
    subprocess.run([sys.executable, os.path.abspath(__file__), *(argv if argv is not None else sys.argv[1:]),
                    "--prepare"], check=True, cwd=harness.ROOT)
    load_start = os.getloadavg()
    world, rvq_dir = os.path.join(d, "world"), os.path.join(d, "rvq")
    logs = {r: os.path.join(d, f"onion_{r}.tsv") for r in sorted({args.small, args.replicas})}
    events = {r: read_json(path + ".json")["events"] for r, path in logs.items()}
    big = logs[args.replicas]
    bz_path = os.path.join(d, f"onion_head_{args.bz2_events}.tsv.bz2")
    ids = ["--id-information", os.path.join(world, "id_information.csv"),
           "--id-metadata", os.path.join(world, "id_metadata.csv")]
    rows, out = [], {}

    def run(name, command, engine, log, *options, env=None, rvq=rvq_dir):
        folder = os.path.join(d, f"{name}_{engine}")
        shutil.rmtree(folder, ignore_errors=True)
        cmd = [sys.executable, "data.py", command, *options, "--out", folder, "--engine", engine]
        if command == "sft":
            cmd += ["--catalog", os.path.join(world, "catalog.csv"), "--rvq", rvq, "--logs", log, *ids]
        else:
            cmd += ["--sft-data", os.path.join(d, "sft_numpy"), "--logs", log]
        print(f"{name} ({engine}) on {os.path.basename(log)} ...", flush=True)
        wall, cpu, rss, text = measured(cmd, f"{name} {engine}", env)
        n = [e for r, e in events.items() if logs[r] == log][0] if log in logs.values() else args.bz2_events
        row = {"stage": name, "engine": engine, "events": n, "wall_s": wall, "cpu_s": cpu, "events_per_s": n / wall,
               "events_per_cpu_s": n / cpu, "peak_rss_mib": rss}
        if command == "sft":   # the log's passes alone (build_sft prints how many and their time)
            passes, seconds = re.search(r"log passes: (\d+), ([0-9.]+) s", text).groups()
            row["passes"], row["passes_s"] = int(passes), float(seconds)
            row["passes_events_per_s"] = row["passes"] * n / row["passes_s"]
        else:                  # the mining alone, before the dedupe and the writing (report.json)
            row["passes_events_per_s"] = read_json(os.path.join(folder, "report.json"))["events_per_second"]
        rows.append(row)
        out[(name, engine)] = folder

    engines = ("numpy",) if args.skip_loop else ("numpy", "loop")
    for engine in engines:
        run("sft", "sft", engine, big)
    run("sft, small samples", "sft", "numpy", big, "--next-examples", "1000", "--max-sessions", "1000")
    run("sft, split from rvq", "sft", "numpy", big, rvq=os.path.join(d, "rvq_logs"))   # one pass
    for engine in engines:
        run("prefs", "prefs", engine, big)
    for engine in engines:
        run("prefs capped", "prefs", engine, big, *CAPS)
    if args.small != args.replicas:
        run("prefs (short log)", "prefs", "numpy", logs[args.small])
    same = {name: same_outputs(out[(name, "numpy")], out[(name, "loop")])
            for name in ("sft", "prefs", "prefs capped") if (name, "loop") in out}
    one_pass_same = same_outputs(out[("sft, split from rvq", "numpy")], out[("sft", "numpy")], rvq_paths=True)
    plain, packed, decoders = bz2_figures(bz_path, args.bz2_events)
    run("prefs from .bz2", "prefs", "numpy", bz_path)
    run("prefs .bz2 1 thread", "prefs", "numpy", bz_path, env={"FASTLOG_THREADS": "0"})

    print(f"\n{'stage':<20} {'engine':<6} {'events':>11} {'wall s':>7} {'CPU s':>7} {'events/s':>10} "
          f"{'ev/CPU s':>10} {'passes ev/s':>11} {'peak RSS MiB':>12}")
    for r in rows:
        print(f"{r['stage']:<20} {r['engine']:<6} {r['events']:>11,} {r['wall_s']:>7.1f} {r['cpu_s']:>7.1f} "
              f"{r['events_per_s']:>10,.0f} {r['events_per_cpu_s']:>10,.0f} {r['passes_events_per_s']:>11,.0f} "
              f"{r['peak_rss_mib']:>12,.0f}")
    print("(events/s: the whole process, imports and writing included; passes: the log passes alone, as data.py "
          "reports them)")
    by = {(r["stage"], r["engine"]): r for r in rows}
    for name in same:
        a, b = by[(name, "numpy")], by[(name, "loop")]
        print(f"{name}: numpy / loop = x{a['events_per_s'] / b['events_per_s']:.1f} wall "
              f"(x{a['events_per_cpu_s'] / b['events_per_cpu_s']:.1f} CPU); outputs "
              f"{'byte-identical' if same[name] else 'DIFFER'}")
    a, b = by[("sft, split from rvq", "numpy")], by[("sft", "numpy")]
    print(f"sft, split from rvq ({a['passes']} pass) / sft ({b['passes']} passes), numpy engine = "
          f"x{a['events_per_s'] / b['events_per_s']:.2f} wall; outputs "
          f"{'byte-identical' if one_pass_same else 'DIFFER'} (meta.json's rvq folder aside)")
    if ("prefs (short log)", "numpy") in by:
        a, b = by[("prefs (short log)", "numpy")], by[("prefs", "numpy")]
        print(f"numpy prefs peak RSS {a['peak_rss_mib']:,.0f} MiB at {a['events']:,} events, "
              f"{b['peak_rss_mib']:,.0f} MiB at {b['events']:,}")
    print(f"\nbz2: {args.bz2_events:,} events, {plain / 1e6:,.1f} MB -> {packed / 1e6:,.1f} MB (bzip2 -9, "
          f"x{plain / packed:.2f})")
    bz = []
    for name, sec in decoders:
        hours_events = REAL_EVENTS / (args.bz2_events / sec) / 3600
        hours_bytes = REAL_BZ2_BYTES / (packed / sec) / 3600
        bz.append({"decoder": name, "seconds": sec, "mb_out_per_s": plain / sec / 1e6,
                   "mb_in_per_s": packed / sec / 1e6, "events_per_s": args.bz2_events / sec,
                   "real_file_hours_by_events": hours_events, "real_file_hours_by_bytes": hours_bytes})
        print(f"  {name:<18} {plain / sec / 1e6:7.1f} MB/s out, {packed / sec / 1e6:6.1f} MB/s in, "
              f"{args.bz2_events / sec:>11,.0f} events/s -> the real file: {hours_events * 60:.0f} min (by its "
              f"events), {hours_bytes * 60:.0f} min (by its 2.2 GB)")
    path = args.out or os.path.join(d, "bench_mining.json")
    write_json(path, {"config": vars(args), "cpus": os.cpu_count(), "load_average_at_start": load_start,
                      "load_average_at_end": os.getloadavg(),
                      "rows": rows, "identical": same, "one_pass_sft_identical": one_pass_same,
                      "bz2": {"events": args.bz2_events, "plain_bytes": plain, "bz2_bytes": packed, "decoders": bz}})
    print(f"figures: {path}; load average {load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end, "
          f"on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    run_main(main)
