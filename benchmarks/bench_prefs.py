"""Preference-mining throughput of `data.py prefs` on synthetic Music4All-Onion logs of 1 and 10 million events.

    python benchmarks/bench_prefs.py [--run runs/demo] [--sizes 1000000 10000000] [--tracks 2000]

The data is generated once and cached under RUN/prefs_world/ (delete it to regenerate):
  world/     `world.py generate` (--tracks, 400 users): the catalogue, its Music4All id tables, a small log;
  rvq/, sft_data/   `rvq.py train` and `data.py sft` on that small log (the time split t_val / t_test);
  chunks/    `world.py listen` over the same catalogue, --chunk-events at a time (seed + 1 + chunk number), since
             world.py holds a call's (users x plays) arrays in memory;
  logs/      onion_<N>.tsv: the first chunks, users renamed `<chunk>-<user>` and track ids mapped to the base
             world's ids (by Spotify track_id), until N events; the same 90-day window as the small log.
Then `data.py prefs --sft-data sft_data --logs logs/onion_<N>.tsv` runs once per log, each in its own process:
wall time (imports and writing the pairs included), events per second (of the whole process, and of the
mining loop alone as data.py reports it), peak RSS (ru_maxrss). The small log runs first as the baseline.
Bounded memory: the peak RSS grows by less than BOUNDED MiB per million more events from the 1M to the 10M log.
Before each larger log its RSS is projected from the two previous ones; if that exceeds the memory available,
it is skipped (--force runs it).
"""
import argparse
import os
import subprocess
import sys

from tqdm import tqdm

import harness  # first: it puts the repository root on sys.path for the imports below
import formats
from common import atomic_open, read_json, run_main, write_json

# -----------------------------------------------------------------------------
RUN: str = "runs/demo"             # a pipeline run folder (make demo builds runs/demo)
SIZES: tuple = (1_000_000, 10_000_000)   # events per benchmarked log
CHUNK_EVENTS: int = 1_000_000            # events per world.py listen call
TRACKS: int = 2000                       # catalogue size (make's default world)
BASE_USERS: int = 400                    # users of the small log that data.py sft splits by time
PLAYS_PER_USER: float = 125.0            # world.py's default mean
LEVELS: int = 3                          # make's defaults for the Semantic IDs
CODEBOOK: int = 32
SEED: int = 0
BOUNDED: float = 16.0                    # MiB of peak RSS per million more events below which memory is flat
# -----------------------------------------------------------------------------


def py(*args):
    subprocess.run([sys.executable, *args], check=True, cwd=harness.ROOT)


def prepare_base(d, args):
    """Catalogue + small log, Semantic IDs, SFT data: the inputs `data.py prefs` needs besides the log."""
    world, rvq_dir, sft_data = (os.path.join(d, n) for n in ("world", "rvq", "sft_data"))
    if not os.path.exists(os.path.join(world, "world_config.json")):
        py("world.py", "generate", "--out", world, "--tracks", str(args.tracks), "--users", str(BASE_USERS),
           "--seed", str(args.seed))
    if not os.path.exists(os.path.join(rvq_dir, "rvq_config.json")):
        py("rvq.py", "train", "--catalog", os.path.join(world, "catalog.csv"), "--out", rvq_dir,
           "--levels", str(LEVELS), "--codebook-size", str(CODEBOOK), "--seed", str(args.seed))
    if not os.path.exists(os.path.join(sft_data, "config.json")):
        py("data.py", "sft", "--catalog", os.path.join(world, "catalog.csv"), "--rvq", rvq_dir,
           "--logs", os.path.join(world, "userid_trackid_timestamp.tsv"),
           "--id-information", os.path.join(world, "id_information.csv"),
           "--id-metadata", os.path.join(world, "id_metadata.csv"), "--out", sft_data,
           "--attribute-examples", "200", "--grounding-examples", "100", "--test-next", "100",
           "--test-attributes", "20", "--seed", str(args.seed))
    return world, sft_data


def make_chunks(d, world, events, args):
    """world.py listen until the chunks hold >= `events` events; returns [(folder, events)]."""
    chunks, total, i = [], 0, 0
    while total < events:
        out = os.path.join(d, "chunks", f"{i:03d}")
        if not os.path.exists(os.path.join(out, "world_config.json")):
            users = max(1, round(args.chunk_events / PLAYS_PER_USER))
            py("world.py", "listen", "--catalog", os.path.join(world, "catalog.csv"), "--out", out,
               "--users", str(users), "--seed", str(args.seed + 1 + i))
        n = read_json(os.path.join(out, "world_config.json"))["summary"]["events"]
        chunks.append((out, n))
        total += n
        i += 1
    return chunks


def build_log(path, world, chunks, events):
    """The first chunks as one Onion log of >= `events` events (users renamed, track ids mapped); returns the count."""
    info = path[:-4] + ".json"
    if os.path.exists(path) and os.path.exists(info):
        return read_json(info)["events"]
    base = {}
    for m4a, track in formats.load_id_metadata(os.path.join(world, "id_metadata.csv")).items():
        base.setdefault(track, m4a)
    n = 0
    with atomic_open(path, "w", encoding="utf-8", newline="") as out:
        out.write("user_id\ttrack_id\ttimestamp\n")
        for i, (folder, _) in enumerate(tqdm(chunks, desc=f"writing {os.path.basename(path)}", disable=None)):
            if n >= events:
                break
            remap = {m: base[t] for m, t in formats.load_id_metadata(os.path.join(folder, "id_metadata.csv")).items()}
            with open(os.path.join(folder, "userid_trackid_timestamp.tsv"), encoding="utf-8") as f:
                next(f)
                for line in f:
                    user, track, ts = line.split("\t")
                    out.write(f"{i}-{user}\t{remap[track]}\t{ts}")
                    n += 1
    write_json(info, {"events": n})
    return n


def mem_available_mib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("inf")


def mine(d, sft_data, name, log, seed):
    """`data.py prefs` on one log in its own process: (wall s, peak RSS MiB, report.json)."""
    out = os.path.join(d, f"prefs_{name}")
    wall, rss = harness.run_measured([sys.executable, "data.py", "prefs", "--sft-data", sft_data, "--out", out,
                                      "--logs", log, "--seed", str(seed)], f"data.py prefs on {log}")
    return wall, rss, read_json(os.path.join(out, "report.json"))


def main(argv=None):
    p = argparse.ArgumentParser(description="data.py prefs throughput and memory on 1M / 10M-event logs")
    p.add_argument("--run", default=RUN, help="the synthetic data is cached in RUN/prefs_world/")
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="events per log, ascending")
    p.add_argument("--chunk-events", type=int, default=CHUNK_EVENTS,
                   help="events per `world.py listen` call, which holds a call's users x plays arrays in memory; "
                        "used when the data is generated (default %(default)s)")
    p.add_argument("--tracks", type=int, default=TRACKS,
                   help="catalogue size of the generated world; used when the data is generated (default "
                        "%(default)s, make's default world)")
    p.add_argument("--seed", type=int, default=SEED,
                   help="seed of the generated world, its IDs and SFT data, of each listen chunk (seed + 1 + chunk "
                        "index) and of data.py prefs (default %(default)s)")
    p.add_argument("--force", action="store_true", help="run a log even if its projected RSS exceeds free memory")
    p.add_argument("--out", default=None, help="JSON of the figures (default RUN/bench_prefs.json)")
    args = p.parse_args(argv)
    if sorted(args.sizes) != args.sizes or min(args.sizes) < 1:
        p.error("--sizes must be positive and ascending")
    d = os.path.join(args.run, "prefs_world")
    world, sft_data = prepare_base(d, args)
    chunks = make_chunks(d, world, max(args.sizes), args)
    logs = [("base", os.path.join(world, "userid_trackid_timestamp.tsv"), None)]
    for n in args.sizes:
        path = os.path.join(d, "logs", f"onion_{n}.tsv")
        logs.append((str(n), path, build_log(path, world, chunks, n)))

    rows = []
    for name, log, _ in logs:
        if len(rows) >= 2:
            (e1, r1), (e2, r2) = [(r["events"], r["peak_rss_mib"]) for r in rows[-2:]]
            events = next(n for nm, _, n in logs if nm == name)
            projected = r2 + (r2 - r1) / max(e2 - e1, 1) * (events - e2)
            if projected > 0.9 * mem_available_mib() and not args.force:
                print(f"{log}: skipped, projected peak RSS {projected / 1024:.1f} GiB > 90% of the "
                      f"{mem_available_mib() / 1024:.1f} GiB available (memory grows with the log); --force runs it")
                rows.append({"log": name, "events": events, "skipped": True, "projected_rss_mib": projected})
                break
        wall, rss, rep = mine(d, sft_data, name, log, args.seed)
        rows.append({"log": name, "events": rep["events_read"], "users": rep["users"],
                     "pairs": sum(rep["pairs"].values()), "wall_s": wall, "events_per_s": rep["events_read"] / wall,
                     "mining_events_per_s": rep["events_per_second"], "peak_rss_mib": rss})

    print(f"\n{'log':<10} {'events':>11} {'users':>8} {'pairs':>10} {'wall s':>8} {'events/s':>10} "
          f"{'mining ev/s':>11} {'peak RSS MiB':>12}")
    for r in rows:
        if r.get("skipped"):
            print(f"{r['log']:<10} {r['events']:>11,} skipped (projected {r['projected_rss_mib']:,.0f} MiB)")
            continue
        print(f"{r['log']:<10} {r['events']:>11,} {r['users']:>8,} {r['pairs']:>10,} {r['wall_s']:>8.1f} "
              f"{r['events_per_s']:>10,.0f} {r['mining_events_per_s']:>11,.0f} {r['peak_rss_mib']:>12,.0f}")
    done = [r for r in rows if not r.get("skipped") and r["log"] != "base"]
    verdict = None
    if len(done) >= 2:
        a, b = done[-2], done[-1]
        growth = b["peak_rss_mib"] / a["peak_rss_mib"]
        per_m = (b["peak_rss_mib"] - a["peak_rss_mib"]) / ((b["events"] - a["events"]) / 1e6)
        verdict = per_m < BOUNDED
        print(f"\npeak RSS x{growth:.2f} from {a['events']:,} to {b['events']:,} events: {per_m:,.0f} MiB per million "
              f"more events (10M more would add {per_m * 10 / 1024:.1f} GiB): memory "
              f"{'bounded' if verdict else 'GROWS with the log'} (bounded: < {BOUNDED:g} MiB per million)")
    out = args.out or os.path.join(args.run, "bench_prefs.json")
    write_json(out, {"config": vars(args), "rows": rows, "bounded": verdict})
    print(f"figures: {out}")


if __name__ == "__main__":
    run_main(main)
