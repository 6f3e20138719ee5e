"""End to end: every script in order through the Makefile's own commands, on a tiny world and a tiny random
Llama; then the faults: a training stage killed mid-run resumes to the same adapter, mismatched inputs stop
before any work, an unwritable output folder is a one-line error."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import ask
import baselines as B
import evaluate as E
import formats
import logfiles
import rvq
import signals
import tasks
from metrics import hit_at_k, top_k_pessimistic
from tests.conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import fusion  # noqa: E402
import val_next  # noqa: E402

pytestmark = pytest.mark.slow   # the whole pipeline through make, then its faults: minutes on 2 cores

TINY = {"TRACKS": "120", "USERS": "30", "CODEBOOK": "8", "ATTRIBUTE_EXAMPLES": "40", "GROUNDING_EXAMPLES": "20",
        "TEST_NEXT": "20", "TEST_ATTRIBUTES": "10", "SFT_STEPS": "4", "SFT_BATCH": "4", "DPO_STEPS": "3",
        "DPO_BATCH": "2", "TRAIN_PAIRS": "12", "VAL_PAIRS": "6", "TEST_PAIRS": "10",
        "SFT_ARGS": "--eval-every 2 --eval-examples 8 --micro-batch-size 4",
        "DPO_ARGS": "--eval-every 2 --eval-pairs 6 --micro-batch-size 2",
        "SASREC_ARGS": "--time-budget 10", "EVAL_ARGS": "--hallucination-prompts 4 --n-boot 50 --batch-size 4",
        "DEVICE": "cpu"}


def make(target, run, model, extra=None, **popen):
    """The Makefile's commands with this interpreter and no venv step."""
    args = ["make", "-s", "-C", ROOT, *target.split(), f"RUN={run}", f"MODEL={model}", f"PY={sys.executable}", "VENV_STAMP="]
    args += [f"{k}={v}" for k, v in {**TINY, **(extra or {})}.items()]
    if popen:
        return subprocess.Popen(args, start_new_session=True, **popen)
    return subprocess.run(args, capture_output=True, text=True, timeout=600)


def adapter(folder):
    from safetensors.torch import load_file
    return {**load_file(os.path.join(folder, "adapter_model.safetensors")),
            **load_file(os.path.join(folder, "id_tokens.safetensors"))}


@pytest.fixture(scope="module")
def demo_run(tiny_smol, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("pipeline") / "run")
    r = make("demo", run, tiny_smol)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return run, r


def test_every_stage_writes_its_artifacts(demo_run):
    run, r = demo_run
    expected = ["world/catalog.csv", "world/userid_trackid_timestamp.tsv", "world/id_information.csv",
                "world/id_metadata.csv", "world/truth.json", "world/world_config.json",
                "rvq/rvq.safetensors", "rvq/semantic_ids.tsv", "rvq/rvq_report.json", "rvq/rvq_config.json",
                "sft_data/train.jsonl", "sft_data/val.jsonl", "sft_data/test_next.jsonl",
                "sft_data/test_attributes.jsonl", "sft_data/listening_stats.npz", "sft_data/meta.json",
                "sft_data/config.json", "sft/adapter/adapter_model.safetensors", "sft/adapter/adapter_config.json",
                "sft/adapter/id_tokens.safetensors", "sft/adapter/id_vocab.json", "sft/log.jsonl",
                "sft/config.json", "sft/summary.json", "prefs/train.jsonl", "prefs/val.jsonl", "prefs/test.jsonl",
                "prefs/report.json", "prefs/track_labels.npz", "sasrec/model.safetensors", "sasrec/summary.json",
                "sasrec/config.json", "dpo/adapter/adapter_model.safetensors", "dpo/ref_logps.safetensors",
                "dpo/log.jsonl", "dpo/summary.json", "eval/report.md", "eval/results.json", "eval/summary.txt",
                "eval/config.json"]
    missing = [p for p in expected if not os.path.exists(os.path.join(run, p))]
    assert not missing
    assert not [f for _, _, fs in os.walk(run) for f in fs if f.endswith(".tmp")]   # nothing half-written
    ids = open(os.path.join(run, "rvq/semantic_ids.tsv")).read().splitlines()
    assert ids[0] == "track_id\tcode_0\tcode_1\tcode_2" and len(set(l.split("\t", 1)[1] for l in ids[1:])) == len(ids) - 1
    train = [json.loads(l) for l in open(os.path.join(run, "sft_data/train.jsonl"))]
    assert {e["task"] for e in train} == {"attributes", "grounding", "next_track"}
    assert all(e["answer"] not in e["prompt"] for e in train)                  # never the answer in the prompt
    # every attribute request names its attributes; attribute_answers.jsonl lists each request's answers: exactly the
    # catalogue tracks that satisfy all of them, the example's own among them
    sets = {json.dumps(x["attributes"]): x["answers"] for x in map(json.loads, open(os.path.join(
        run, "sft_data", formats.ATTRIBUTE_ANSWERS)))}
    cat, _ = formats.load_catalog(os.path.join(run, "world/catalog.csv"))
    row_codes = formats.row_codes_of(cat, *formats.load_semantic_ids(os.path.join(run, "rvq/semantic_ids.tsv")))
    requests = [e for e in train if e["task"] == "attributes"]
    assert requests and all(e["answer"] in sets[json.dumps(e["attributes"])] for e in requests)
    for attrs, answers in sets.items():
        rows = tasks.relevant_rows(cat, tasks.attribute_masks(cat), [tuple(a) for a in json.loads(attrs)], row_codes)
        assert sorted(answers) == sorted(formats.id_text(row_codes[r]) for r in rows)
    tests_attr = [json.loads(l) for l in open(os.path.join(run, "sft_data/test_attributes.jsonl"))]
    train_starts = {t.split("{")[0] for t in tasks.TRAIN_REQUEST_TEMPLATES}
    assert tests_attr and not any(q["prompt"].startswith(s) for q in tests_attr for s in train_starts if s)
    meta = json.load(open(os.path.join(run, "sft_data/meta.json")))
    assert meta["t_val"] <= meta["t_test"]
    pairs = [json.loads(l) for l in open(os.path.join(run, "prefs/test.jsonl"))]
    assert pairs and all(logfiles.parse_ts(p["time"]) >= meta["t_test"] for p in pairs)   # held-out = later
    report = json.load(open(os.path.join(run, "prefs/report.json")))
    assert report["contexts_with_candidates_cut_at_a_window_boundary"] > 0      # the tiny world does straddle
    labels = np.load(os.path.join(run, "prefs/track_labels.npz"))
    assert labels["long"].sum() > 0 and labels["skip"].sum() > 0 and np.all(labels["long"] + labels["skip"] <= labels["plays"])
    stats = np.load(os.path.join(run, "sft_data/listening_stats.npz"))
    for w in ("train", "val"):                                                 # sessions for SASRec
        items, off = stats[f"{w}_seq_items"], stats[f"{w}_seq_offsets"]
        assert off[0] == 0 and off[-1] == len(items) and np.all(np.diff(off) >= 2)
    tests_next = [json.loads(l) for l in open(os.path.join(run, "sft_data/test_next.jsonl"))]
    assert all(q["history"][-1] == q["context_track"] == q["session"][-1] for q in tests_next)
    assert all(p["chosen"] not in p["prompt"] and p["rejected"] not in p["prompt"] for p in pairs)
    log = [json.loads(l) for l in open(os.path.join(run, "sft/log.jsonl"))]
    assert [x["step"] for x in log] == [1, 2, 3, 4]
    dlog = [json.loads(l) for l in open(os.path.join(run, "dpo/log.jsonl"))]
    alpha = json.load(open(os.path.join(run, "dpo/config.json")))["rpo_alpha"]   # log 2 + the NLL term at step 0
    nll = -dlog[0]["eval/logps/chosen"] / 4                                      # per token: 3 IDs + end
    assert dlog[0]["step"] == 0 and abs(dlog[0]["eval/loss"] - (0.693147 + alpha * nll)) < 1e-4


def test_colistened_answers_are_the_logs_counts_as_ids(demo_run, tiny_smol):
    """sft.colistened_answers: every co-listening count of listening_stats.npz, keyed and listed by Semantic ID."""
    import model as M
    import sft
    run, _ = demo_run
    meta = json.load(open(os.path.join(run, "sft_data/meta.json")))
    _, _, vocab = M.load_policy(tiny_smol, levels=meta["levels"], codebook_size=meta["codebook_size"])
    near = sft.colistened_answers(os.path.join(run, "sft_data"), meta, vocab)
    cat, _ = formats.load_catalog(os.path.join(run, "world/catalog.csv"))
    row_codes = formats.row_codes_of(cat, *formats.load_semantic_ids(os.path.join(run, "rvq/semantic_ids.tsv")))
    stats = np.load(os.path.join(run, "sft_data/listening_stats.npz"))
    expected = {}
    for i, j, c in zip(stats["cooc_i"], stats["cooc_j"], stats["cooc_count"]):
        expected[(tuple(vocab.ids(row_codes[int(i)])), tuple(vocab.ids(row_codes[int(j)])))] = float(c)
    got = {(k, tuple(a)): w for k, (answers, weights) in near.items() for a, w in zip(answers.tolist(), weights)}
    assert expected and got == expected


def test_results_cover_every_system_and_metric(demo_run):
    run, r = demo_run
    res = json.load(open(os.path.join(run, "eval/results.json")))
    nxt = res["ranking"]["next_track"]
    assert set(nxt) >= {"random", "popularity", "genre popularity", "content kNN", "genre content kNN",
                        "content x popularity", "content x co-listening", "neighbour ranks x co-listening",
                        "item kNN", "SASRec", "MiniLM", "LLM base", "SFT", "DPO"}
    cp = res["content_popularity"]      # its kernel width, chosen on validation next plays: every one of them
    code_row = val_next.catalogue_codes(json.load(open(os.path.join(run, "sft_data/meta.json"))))[3]
    n_val = len(E.val_next_examples(os.path.join(run, "sft_data"), code_row))
    assert n_val > 0 and cp["validation_queries"] == n_val == res["content_colisten"]["validation_queries"]
    assert str(cp["tau"]) in cp["validation_hit@10"]
    assert cp["validation_hit@10"][str(cp["tau"])] == max(cp["validation_hit@10"].values())
    cc = res["content_colisten"]        # its width and power, chosen on the same plays
    assert cc["validation_hit@10"][f"{cc['tau']:g},{cc['lambda']:g}"] == max(cc["validation_hit@10"].values())
    # lam 0 is content x popularity itself: the grid's best is at least the width's best
    assert max(cc["validation_hit@10"].values()) >= max(cp["validation_hit@10"].values())
    nr = res["neighbour_ranks"]         # the learned ranker: fitted on the training next plays, its epoch the
    n_train = len(E.val_next_examples(os.path.join(run, "sft_data"), code_row, name="train.jsonl"))   # best there
    assert nr["train_plays"] == n_train > 0 and nr["validation_plays"] == n_val
    ce = {int(e): v for e, v in nr["validation_cross_entropy"].items()}
    assert sorted(ce) == list(range(1, E.RANKER_EPOCHS + 1)) and ce[nr["kept_epoch"]] == min(ce.values())
    assert set(res["ranking"]["attributes"]) >= {"random", "popularity", "genre popularity", "MiniLM", "LLM base",
                                                 "SFT", "DPO"}
    assert res["ranking_method"] == "exact"                                      # a small catalogue: exact top K
    for m in ("hit@1", "hit@5", "hit@10", "hit@20", "ndcg@10", "mrr@20", "precision@10"):
        s = nxt["SFT"][m]
        assert 0 <= s["lo"] <= s["mean"] <= s["hi"] <= 1
    assert set(res["preference_accuracy"]) == {"SFT", "DPO", "play count", "long-listen rate", "audio logistic",
                                               "play count (pairs)", "long-listen rate (pairs)",
                                               "audio logistic (pairs)"}
    for test in ("next_track", "attributes", "preferences"):                     # the bar and the gap to it
        best = res["strongest_baseline"][test]
        assert best["name"] not in ("SFT", "DPO", "LLM base")
        assert f"{test}: SFT - {best['name']} ({best['metric']})" in res["paired"]
        assert f"{test}: DPO - {best['name']} ({best['metric']})" in res["paired"]
        for m, name in best.get("by_metric", {}).items():                         # the bar of each metric
            assert name not in ("SFT", "DPO", "LLM base") and f"{test}: SFT - {name} ({m})" in res["paired"]
            assert f"{test}: SFT - {name} ({m})" in r.stdout
    assert set(res["strongest_baseline"]["next_track"]["by_metric"]) == {"hit@10", "ndcg@10"}
    for h in res["hallucination"].values():
        assert set(h) >= {"malformed@1", "invalid@1", "malformed@10", "invalid@10"}
    assert res["hallucination_prompts"] == 4 and set(res["hallucination_ci"]) == set(res["hallucination"])
    for n, c in res["hallucination_ci"].items():     # the pooled shares, now with their intervals over the prompts
        assert c["hallucinated@1"]["mean"] == res["hallucination"][n]["hallucinated@1"]
        assert c["hallucinated@10"]["lo"] <= c["hallucinated@10"]["mean"] <= c["hallucinated@10"]["hi"]
    assert "hallucination: DPO - SFT (hallucinated@1)" in res["paired"]
    for n, ex in res["hallucination_examples"].items():   # one example for each hallucinated top-1 answer
        assert len(ex) == round(res["hallucination"][n]["hallucinated@1"] * 4)
    report = open(os.path.join(run, "eval/report.md")).read()
    assert "## Next track" in report and "| SASRec |" in report and "Preference accuracy" in report
    assert "| long-listen rate |" in report and "Strongest baseline" in report
    assert "## Hallucination (unconstrained beam search, 4 prompts)" in report
    shown = [e for n, ex in res["hallucination_examples"].items() if n != "LLM base" for e in ex]
    assert ("Top-1 answers that are no track" in report) == bool(shown)
    assert all(f"`{e['prompt']}` -> `{e['top1']}`" in report for e in shown)
    assert "hallucinated@1 (4 prompts, 95% interval): SFT " in r.stdout
    assert "next_track" in r.stdout and "preference accuracy" in r.stdout        # the demo prints the tables
    if pytest.importorskip("matplotlib"):
        for png in ("sft_loss.png", "dpo_rewards.png", "hr_next_track.png", "preference_accuracy.png"):
            assert open(os.path.join(run, "eval", png), "rb").read(4) == b"\x89PNG"


def test_learned_ranker_sparse_form_ranks_as_the_dense(demo_run, tiny_smol, tmp_path):
    """evaluate.py --ranker-dense-max-items below the catalogue: the learned baseline without (N, N) tables (the form
    for real catalogues) keeps the same epoch and ranks every test query as the demo's dense form did."""
    run, _ = demo_run
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "evaluate.py", "--run", run, "--model", tiny_smol, "--out", str(out),
                        "--ranker-dense-max-items", "100", "--no-minilm", "--hallucination-prompts", "2",
                        "--n-boot", "20", "--max-attributes", "2", "--device", "cpu"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    sparse, dense = (json.load(open(p)) for p in (out / "results.json", os.path.join(run, "eval", "results.json")))
    assert sparse["neighbour_ranks"]["form"] == "sparse" and dense["neighbour_ranks"]["form"] == "dense"
    assert sparse["neighbour_ranks"]["kept_epoch"] == dense["neighbour_ranks"]["kept_epoch"]
    for e, v in dense["neighbour_ranks"]["validation_cross_entropy"].items():   # chunked: the same mean, to rounding
        assert abs(sparse["neighbour_ranks"]["validation_cross_entropy"][e] - v) < 1e-5
    assert sparse["per_query"]["next_track"][E.NEIGHBOUR_RANKS] == dense["per_query"]["next_track"][E.NEIGHBOUR_RANKS]


def test_rerun_skips_up_to_date_stages(demo_run, tiny_smol):
    run, _ = demo_run
    r = make("demo", run, tiny_smol)
    assert r.returncode == 0
    for script in ("world.py", "rvq.py", "data.py", "sft.py", "dpo.py", "sasrec.py", "evaluate.py"):
        assert script not in r.stdout                     # nothing re-ran


def test_a_changed_option_reruns_its_stage_and_the_later_ones(demo_run, tiny_smol, tmp_path):
    """Stage stamps: SFT_STEPS=5 on a finished run reruns SFT, DPO and the evaluation, nothing before them."""
    import shutil
    run = str(tmp_path / "copy")
    shutil.copytree(demo_run[0], run)                                  # copy2 keeps the timestamps
    ran = lambda r: {s for s in ("world.py", "rvq.py", "data.py", "sft.py", "dpo.py", "sasrec.py", "evaluate.py")
                     if s in r.stdout}
    assert ran(make("-n demo", run, tiny_smol)) == set()
    assert ran(make("-n demo", run, tiny_smol, {"SFT_STEPS": "5"})) == {"sft.py", "dpo.py", "evaluate.py"}
    assert ran(make("-n demo", run, tiny_smol, {"SFT_STEPS": "5", "SIGNALS": "audio"})) == \
        {"rvq.py", "data.py", "sft.py", "dpo.py", "sasrec.py", "evaluate.py"}


def test_ask_for_music(demo_run, tiny_smol):
    run, _ = demo_run
    r = subprocess.run([sys.executable, "ask.py", "--run", run, "--model", tiny_smol, "-k", "3",
                        "upbeat rock for a party"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l[:3].strip().rstrip(".").isdigit()]
    assert len(lines) == 3 and all("<a_" in l for l in lines)
    assert "note:" not in r.stdout                                   # rock, upbeat, for a party: trained words
    # a listening history: "something like" a catalogue track, after two others (one given by its ID)
    cat, _ = formats.load_catalog(os.path.join(run, "world", "catalog.csv"))
    ids = dict(l.split("\t", 1) for l in open(os.path.join(run, "rvq", "semantic_ids.tsv")).read().splitlines()[1:])
    name = lambda i: f"{tasks.display_artist(cat.artists[i])} - {cat.track_name[i]}"
    first_id = formats.id_text(ids[cat.track_id[1]].split("\t"))
    r = subprocess.run([sys.executable, "ask.py", "--run", run, "-k", "2", "--played",   # no --model: the run's own
                        name(0), "--played", first_id, f"something like {name(2)}"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    prompt = next(l for l in r.stdout.splitlines() if l.startswith("prompt: "))
    assert formats.id_text(ids[cat.track_id[2]].split("\t")) in prompt and name(2) not in prompt   # CONTEXT_TEXT=genre
    assert f"context track: {name(2)}" in r.stdout                 # ... so ask.py says which track it is
    assert "--played tracks are not in the prompt" in r.stdout     # HISTORY=1: told so
    # every track but the three just heard answers when k asks for all the others: none of the three among them
    r = subprocess.run([sys.executable, "ask.py", "--run", run, "--json", "-k", str(len(cat.track_id) - 3),
                        "--played", name(0), "--played", first_id, f"something like {name(2)}"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = [t["track_id"] for t in json.loads(r.stdout)["tracks"]]
    assert sorted(got) == sorted(cat.track_id[3:])
    r = subprocess.run([sys.executable, "ask.py", "--run", run, "--model", tiny_smol, "--played", "Nobody - Nothing",
                        f"something like {name(2)}"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--played 'Nobody - Nothing': no such track" in r.stderr
    # the track by its track_id, as such or as Spotify shares it; a name no track has is said to be one
    tid = cat.track_id[2]
    lines = [f"something like {name(2)}", f"more like {tid}", f"something like spotify:track:{tid}",
             f"tracks like https://open.spotify.com/track/{tid}?si=0a1b2c", "something like Nobody Atall"]
    r = subprocess.run([sys.executable, "ask.py", "--run", run, "--model", tiny_smol, "-k", "2", "--json"],
                       input="\n".join(lines) + "\n", cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    answers = [json.loads(l) for l in r.stdout.splitlines()]
    assert [a["context_track"]["track_id"] for a in answers[:4]] == [tid] * 4
    assert len({a["prompt"] for a in answers[:4]}) == 1 and not any(a["notes"] for a in answers[:4])
    assert answers[4]["context_track"] is None and answers[4]["prompt"] == lines[4]
    assert answers[4]["notes"][0].startswith("note: no catalogue track is named 'Nobody Atall' (")
    assert ask.find_track(cat, f"open.spotify.com/track/{tid}") == 2
    assert ask.find_track(cat, f"spotify:track:{tid}x") is None
    r = subprocess.run([sys.executable, "ask.py", "--run", run, "--model", tiny_smol, "--adapter", "nope", "x"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no trained adapter" in r.stderr


def test_ask_reads_requests_from_stdin(demo_run, tiny_smol):
    """ask.py without a request: one a line from standard input, the model loaded once; --json prints one object a
    line whose tracks are the catalogue's, best first; a bad request is said in one line and the rest answered."""
    run, _ = demo_run
    cat, _ = formats.load_catalog(os.path.join(run, "world", "catalog.csv"))
    ids = dict(l.split("\t", 1) for l in open(os.path.join(run, "rvq", "semantic_ids.tsv")).read().splitlines()[1:])
    name = lambda i: f"{tasks.display_artist(cat.artists[i])} - {cat.track_name[i]}"
    ask = [sys.executable, "ask.py", "--run", run, "--model", tiny_smol, "-k", "3"]
    lines = f"upbeat rock for a party\n\n  something like {name(2)}  \nquit\nnever read\n"
    r = subprocess.run(ask + ["--json"], input=lines, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    answers = [json.loads(l) for l in r.stdout.splitlines()]
    assert [a["request"] for a in answers] == ["upbeat rock for a party", f"something like {name(2)}"]
    assert answers[0]["context_track"] is None and answers[1]["context_track"]["name"] == cat.track_name[2]
    for a in answers:
        assert [t["rank"] for t in a["tracks"]] == [1, 2, 3]
        assert [t["logp"] for t in a["tracks"]] == sorted((t["logp"] for t in a["tracks"]), reverse=True)
        for t in a["tracks"]:
            assert t["semantic_id"] == formats.id_text(ids[t["track_id"]].split("\t"))
    assert cat.track_id[2] not in {t["track_id"] for t in answers[1]["tracks"]}   # never the track asked about
    # the same requests one at a time, as text: the same tracks
    one = subprocess.run(ask + ["--json", "upbeat rock for a party"], cwd=ROOT, capture_output=True, text=True)
    assert json.loads(one.stdout) == answers[0]
    # --played holds for every line; a request that names no track cannot take it: one line, exit 2, others answered
    r = subprocess.run(ask + ["--played", name(0)], input=f"something like {name(2)}\nupbeat rock\n", cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: request 2 ('upbeat rock')")
    assert f"context track: {name(2)}" in r.stdout and r.stdout.count(" 1. ") == 1


def test_fusion_on_validation(demo_run, tiny_smol, tmp_path):
    """benchmarks/fusion.py on the run: the model's exact log-prob of every track fused with content x co-listening's
    score; its model and baseline rows rank as val_next.py's on the same draw, and --scores is read back."""
    run, _ = demo_run
    out, scores = tmp_path / "f.json", tmp_path / "s.npz"
    cmd = [sys.executable, "benchmarks/fusion.py", "--run", run, "--model", tiny_smol, "--adapter",
           f"{run}/sft/adapter", "--queries", "4", "--select", "3", "--scores", str(scores), "--out", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    f = json.load(open(out))
    z = np.load(scores)
    assert z["selection"].shape[0] == 3 and z["queries"].shape[0] == 4 and np.isfinite(z["queries"]).all()
    assert f["lam"] in fusion.LAMBDAS and len(f["selection_hit"]) == 2 * len(fusion.LAMBDAS)
    assert "model x baseline - content x co-listening hit@10" in f["paired"]
    v = tmp_path / "v.json"
    r2 = subprocess.run([sys.executable, "benchmarks/val_next.py", "--run", run, "--model", tiny_smol, "--queries", "4",
                         "--attribute-queries", "0", "--hallucination-prompts", "0", "--pairs", "none", "--adapter",
                         f"SFT={run}/sft/adapter", "--out", str(v)], cwd=ROOT, capture_output=True, text=True)
    assert r2.returncode == 0, r2.stderr[-3000:]
    val = json.load(open(v))["hits"]
    assert f["hits"]["model"] == val["SFT"] and f["hits"]["content x co-listening"] == val["content x co-listening"]
    # a second call reads the kept scores: the same figures, no scoring
    r3 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r3.returncode == 0 and "model scores of every track" not in r3.stdout
    assert json.load(open(out)) == f


def test_bench_choice_on_the_run(demo_run):
    """benchmarks/bench_choice.py: the sorted and the counted HR@10 choose the same setting on the run's plays, and
    content x popularity's width read off the table is its own pass's."""
    run, _ = demo_run
    r = subprocess.run([sys.executable, "benchmarks/bench_choice.py", "--run", run, "--plays", "20"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(r.stdout)
    assert row["same"] is True and row["plays"] == 20 and row["settings"] == 36
    assert row["content_popularity_same"] is True and row["content_popularity_tau"] in B.CONTENT_TAUS


def test_validation_ranking_and_preferences(demo_run, tiny_smol, tmp_path):
    """benchmarks/val_next.py on the run: the adapters and the baselines on validation queries, and each adapter's
    accuracy on the validation preference pairs beside the long-listen rate's on the same pairs."""
    run, _ = demo_run
    out = tmp_path / "val.json"
    r = subprocess.run([sys.executable, "benchmarks/val_next.py", "--run", run, "--model", tiny_smol, "--queries", "6",
                        "--attribute-queries", "3", "--hallucination-prompts", "2", "--swap-context", "--adapter",
                        f"SFT={run}/sft/adapter", "--adapter", f"DPO={run}/dpo/adapter", "--reward-reference", "SFT",
                        "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    hits = json.load(open(out))["hits"]
    pairs = [json.loads(l) for l in open(os.path.join(run, "prefs", "val.jsonl"))]
    labels = np.load(os.path.join(run, "prefs", "track_labels.npz"))
    cat, _ = formats.load_catalog(os.path.join(run, "world", "catalog.csv"))
    row = {t: i for i, t in enumerate(cat.track_id)}
    rate = (labels["long"] + 1.0) / (labels["long"] + labels["skip"] + 2.0)     # Laplace, as evaluate.py
    want = [1.0 if rate[row[p["chosen_track"]]] > rate[row[p["rejected_track"]]] else
            0.5 if rate[row[p["chosen_track"]]] == rate[row[p["rejected_track"]]] else 0.0 for p in pairs]
    assert pairs and hits["long-listen rate"]["preference"] == want
    for name in ("SFT", "DPO"):
        assert len(hits[name]["preference"]) == len(pairs) and len(hits[name]["hit"]) == 6
        assert set(hits[name]["preference"]) <= {0.0, 0.5, 1.0}
        # --swap-context: each query ranked again with another track of its genre in the prompt
        assert len(hits[name]["hit_swapped"]) == 6 and set(hits[name]["hit_swapped"]) <= {0.0, 1.0}
        assert len(hits[name]["hit_unswapped"]) == 6 and set(hits[name]["hit_unswapped"]) <= {0.0, 1.0}
        assert len(hits[name]["top_kept"]) == 6 and all(0 <= x <= 1 for x in hits[name]["top_kept"])
    # --reward-reference SFT: DPO's implicit reward against SFT's log-probs, on the same pairs; none for SFT itself
    assert len(hits["DPO reward"]["preference"]) == len(pairs) and "SFT reward" not in hits
    assert set(hits["DPO reward"]["preference"]) <= {0.0, 0.5, 1.0} and "DPO reward" in r.stdout
    r2 = subprocess.run([sys.executable, "benchmarks/val_next.py", "--run", run, "--model", tiny_smol, "--adapter",
                         f"DPO={run}/dpo/adapter", "--reward-reference", "SFT"], cwd=ROOT, capture_output=True, text=True)
    assert r2.returncode == 2 and "--reward-reference SFT: no --adapter of that name" in r2.stderr
    assert "context swapped within its genre" in r.stdout
    assert "SFT - DPO preference accuracy" not in r.stdout and "DPO - SFT preference accuracy" in r.stdout
    # content x popularity, its width fitted on validation plays other than the 6 queries, ranks as evaluate.py's
    val = json.load(open(out))
    meta = json.load(open(os.path.join(run, "sft_data", "meta.json")))
    ids, codes = formats.load_semantic_ids(meta["semantic_ids"])
    code_row = {tuple(int(c) for c in cs): row[t] for t, cs in zip(ids, codes)}
    queries, others = val_next.val_queries(os.path.join(run, "sft_data"), 6, val_next.SEED, code_row, rest=True)
    assert len(queries) == 6 and not {id(q) for q in queries} & {id(o) for o in others}
    assert len(queries) + len(others) == len(E.val_next_examples(os.path.join(run, "sft_data"), code_row))
    feats = signals.preprocess(cat.features, rvq.load_rvq(meta["rvq"])["params"])
    popularity = np.load(os.path.join(run, "sft_data", "listening_stats.npz"))["popularity"].astype(np.float64)
    genres = B.genre_masks(cat.genres)
    tau = val["content_popularity_tau"]
    assert tau == B.select_tau(feats, popularity, [(h[-1], {r}) for _, h, r in others[:val_next.BASELINE_CHOICE]],
                               lambda c: genres[cat.genres[c][0]])[0]
    cp_hits = [float(hit_at_k(top_k_pessimistic(B.content_popularity_scores(
        feats, h[-1], popularity, genres[cat.genres[h[-1]][0]], tau), {r}, 10, exclude=[h[-1]]), {r}, 10))
        for _, h, r in queries]
    assert hits["content x popularity"]["hit"] == cp_hits
    # and content x co-listening, its width and power chosen on the same other plays
    _, cooc, _ = E.load_listening(os.path.join(run, "sft_data"), os.path.join(run, "prefs"), len(popularity))
    choice = [(h[-1], {r}) for _, h, r in others[:val_next.BASELINE_CHOICE]]
    tau_co, lam = B.select_tau_lambda(feats, popularity, cooc, choice, lambda c: genres[cat.genres[c][0]])[0]
    cc_hits = [float(hit_at_k(top_k_pessimistic(B.content_colisten_scores(
        feats, h[-1], popularity, B.colisten_counts(cooc, h[-1], len(popularity)), genres[cat.genres[h[-1]][0]],
        tau_co, lam), {r}, 10, exclude=[h[-1]]), {r}, 10)) for _, h, r in queries]
    assert hits["content x co-listening"]["hit"] == cc_hits
    # --pair --by-plays: the pair split by the training-window plays of each query's context and relevant track
    split = val_next.paired_by_plays(run, 6, val_next.SEED, f"{out}:SFT", f"{out}:DPO")
    for side, track in (("context", lambda h, r: h[-1]), ("answer", lambda h, r: r)):
        rare = [i for i, (_, h, r) in enumerate(queries) if popularity[track(h, r)] < 20]
        want_groups = {g: m for g, m in (("0-19", rare), ("20+", [i for i in range(6) if i not in rare])) if m}
        assert set(split[side]) == set(want_groups)
        for g, m in want_groups.items():
            n, sft_hr, dpo_hr, d = split[side][g]
            assert n == len(m) and sft_hr == pytest.approx(np.mean([hits["SFT"]["hit"][i] for i in m]))
            assert dpo_hr == pytest.approx(np.mean([hits["DPO"]["hit"][i] for i in m]))
            assert d[0] == pytest.approx(sft_hr - dpo_hr)
    with pytest.raises(val_next.UserError, match="its queries are not the draw of"):
        val_next.paired_by_plays(run, 6, val_next.SEED + 1, f"{out}:SFT", f"{out}:DPO")
    r = subprocess.run([sys.executable, "benchmarks/val_next.py", "--pair", f"{out}:SFT", f"{out}:DPO", "--by-plays",
                        "--run", run, "--queries", "6"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "hit@10" in r.stdout, r.stderr[-3000:]
    assert sum(f"{side} track played" in line for line in r.stdout.splitlines() for side in ("context", "answer")) \
        == len(split["context"]) + len(split["answer"])
    # benchmarks/pref_frontier.py on the same queries and pairs, the SFT row placed beside the counts' scores
    front = tmp_path / "frontier.json"
    r = subprocess.run([sys.executable, "benchmarks/pref_frontier.py", "--run", run, "--queries", "6", "--llm",
                        f"{out}:SFT", "--out", str(front)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    table = json.load(open(front))["table"]
    assert table["long-listen rate"]["preference"][0] == pytest.approx(np.mean(want))
    assert table[f"{out}:SFT"]["hit"][0] == pytest.approx(np.mean(hits["SFT"]["hit"]))
    assert table[f"{out}:SFT"]["preference"][0] == pytest.approx(np.mean(hits["SFT"]["preference"]))
    assert table["head 10 by k=1, rate below"]["hit"] == table["k=1"]["hit"]     # s_1's top 10, by construction
    assert "pairs whose two tracks are both outside" in r.stdout
    r = subprocess.run([sys.executable, "benchmarks/pref_frontier.py", "--run", run, "--queries", "6", "--llm",
                        f"{out}:NOPE"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "no row 'NOPE'" in r.stderr and r.stderr.count("\n") == 1
    # benchmarks/id_ceiling.py on the same queries: the ID-only rankers' rows pair with the adapters' (val_next.py
    # --pair checks that both files hold the same queries through the baselines' hits)
    ceil = tmp_path / "ceiling.json"
    r = subprocess.run([sys.executable, "benchmarks/id_ceiling.py", "--run", run, "--queries", "6", "--epochs", "2",
                        "--attribute-queries", "3", "--request-epochs", "2", "--llm", f"{out}:SFT", "--out", str(ceil)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    c = json.load(open(ceil))
    # the attribute requests are val_next.py's 3 (the same draw): the adapter's P@10 carried over, beside MiniLM and
    # the two request rankers that read the IDs and the requested attributes
    assert c["hits"]["SFT"]["precision"] == hits["SFT"]["precision"] and c["attribute_queries"] == 3
    for name in ("genre popularity", "MiniLM", "ID requests (examples)", "ID requests (answer sets)"):
        assert len(c["hits"][name]["precision"]) == 3 and all(0 <= x <= 1 for x in c["hits"][name]["precision"])
    assert "ID requests (examples) - MiniLM (precision@10)" in c["paired"] and sorted(
        c["request_epochs"]["ID requests (examples)"]) == ["1", "2"]
    # the adapter's row is val_next.py's, beside the rankers; the queries split by their context's training count
    assert c["hits"]["SFT"]["hit"] == hits["SFT"]["hit"] and "SFT - content x popularity hit@10" in r.stdout
    assert sum(b["queries"] for b in c["by_context_count"].values()) == 6
    r = subprocess.run([sys.executable, "benchmarks/id_ceiling.py", "--run", run, "--queries", "5", "--epochs", "1",
                        "--llm", f"{out}:SFT"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "not made on these validation queries" in r.stderr and r.stderr.count("\n") == 1
    assert c["hits"]["content x popularity"] == hits["content x popularity"]
    # genre popularity's next-track hits as val_next.py's (the attribute requests add its P@10 beside them)
    assert {m: c["hits"]["genre popularity"][m] for m in ("hit", "ndcg")} == hits["genre popularity"]
    assert c["hits"]["item kNN"] == hits["item kNN"]
    for name in ("ID n-gram", "ID factorised"):
        assert len(c["hits"][name]["hit"]) == 6 and set(c["hits"][name]["hit"]) <= {0.0, 1.0}
    assert sorted(c["factorised_select_hr"]) == ["1", "2"] and abs(sum(c["ngram_weights"]) - 1) < 1e-9
    r = subprocess.run([sys.executable, "benchmarks/val_next.py", "--pair", f"{ceil}:ID factorised", f"{out}:SFT"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "ID factorised - " in r.stdout and "hit@10" in r.stdout, r.stderr[-2000:]
    # the preference rows, on the same validation pairs: the rate as val_next.py's, ID logistic beside it
    assert c["hits"]["long-listen rate"] == hits["long-listen rate"]
    assert len(c["hits"]["ID logistic"]["preference"]) == len(pairs)
    assert len(c["hits"]["ID logistic (DPO's pairs)"]["preference"]) == len(pairs)   # fitted on DPO's drawn pairs
    r = subprocess.run([sys.executable, "benchmarks/val_next.py", "--pair", f"{ceil}:ID logistic", f"{out}:DPO"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and "preference accuracy" in r.stdout, r.stderr[-2000:]
    # benchmarks/kernel_ceiling.py on the same 6 queries: content x popularity as val_next.py's, each learned form's
    # two kept epochs from one trace, the adapter's row carried over; both features
    for features in ("audio", "vectors"):
        kc = tmp_path / f"kernel_{features}.json"
        r = subprocess.run([sys.executable, "benchmarks/kernel_ceiling.py", "--run", run, "--queries", "6",
                            "--epochs", "3", "--features", features, "--llm", f"{out}:SFT", "--out", str(kc)],
                           cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        k = json.load(open(kc))
        assert k["hits"]["SFT"]["hit"] == hits["SFT"]["hit"]
        for form in ("kernel", "neighbour ranks", "neighbour ranks x co-listening"):
            assert sorted(k["trace"][form]) == ["1", "2", "3"]
            for rule in ("best likelihood", "best HR@10"):
                name = f"learned {form} ({rule})"
                assert len(k["hits"][name]["hit"]) == 6 and str(k["kept"][name]["epoch"]) in k["trace"][form]
        assert "SFT - content x popularity" in r.stdout and "SFT - content x co-listening" in r.stdout
    assert k["hits"]["content x popularity (vectors)"] and "content x popularity" not in k["hits"]
    assert json.load(open(tmp_path / "kernel_audio.json"))["hits"]["content x popularity"] == \
        hits["content x popularity"]
    r = subprocess.run([sys.executable, "benchmarks/kernel_ceiling.py", "--run", run, "--queries", "5", "--epochs",
                        "1", "--llm", f"{out}:SFT"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "not made on these validation queries" in r.stderr and r.stderr.count("\n") == 1


def test_pref_levels_on_the_run(demo_run, tiny_smol, tmp_path):
    """benchmarks/pref_levels.py: its summed rows rank the validation pairs exactly as val_next.py's preference rows
    (the log-prob and DPO's implicit reward), the long-listen rate as well, and every level's row is there."""
    run, _ = demo_run
    adapters = ["--adapter", f"SFT={run}/sft/adapter", "--adapter", f"DPO={run}/dpo/adapter"]
    v, out = tmp_path / "v.json", tmp_path / "levels.json"
    r = subprocess.run([sys.executable, "benchmarks/val_next.py", "--run", run, "--model", tiny_smol, "--queries", "2",
                        "--attribute-queries", "0", "--hallucination-prompts", "0", *adapters,
                        "--reward-reference", "SFT", "--out", str(v)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, "benchmarks/pref_levels.py", "--run", run, "--model", tiny_smol, *adapters,
                        "--reference", "SFT", "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    val, got = json.load(open(v))["hits"], json.load(open(out))
    n = len([l for l in open(os.path.join(run, "prefs", "val.jsonl")) if l.strip()])
    assert got["groups"]["all"] == n and got["hits"]["long-listen rate"] == val["long-listen rate"]["preference"]
    assert got["hits"]["SFT sum (evaluate.py)"] == val["SFT"]["preference"]
    assert got["hits"]["DPO sum (evaluate.py)"] == val["DPO"]["preference"]
    assert got["hits"]["DPO reward sum (evaluate.py)"] == val["DPO reward"]["preference"]
    levels = json.load(open(os.path.join(run, "sft_data", "meta.json")))["levels"]
    for name in ("SFT", "DPO", "DPO reward"):
        for l in range(1, levels + 1):
            assert len(got["hits"][f"{name} level {l}"]) == n and set(got["hits"][f"{name} level {l}"]) <= {0, 0.5, 1}
    assert "SFT reward sum (evaluate.py)" not in got["hits"] and f"SFT levels >= {levels}" not in got["hits"]
    # each row is paired against its adapter's summed log-prob too (the reward rows against the log-prob's)
    mean = lambda row: np.mean(got["hits"][row])   # noqa: E731
    assert got["table"]["DPO sum (evaluate.py)"]["minus_sum"] is None
    assert got["table"]["DPO reward level 1"]["minus_sum"][0] == pytest.approx(
        mean("DPO reward level 1") - mean("DPO sum (evaluate.py)"))
    assert got["table"]["SFT level 2"]["minus_sum"][0] == pytest.approx(
        mean("SFT level 2") - mean("SFT sum (evaluate.py)"))
    r = subprocess.run([sys.executable, "benchmarks/pref_levels.py", "--run", run, "--model", tiny_smol, *adapters[:2],
                        "--reference", "DPO"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr == "error: --reference DPO: no --adapter of that name\n"


def test_teacher_targets_on_the_run(demo_run, tiny_smol, tmp_path):
    """benchmarks/teacher_targets.py: each context's distribution is content x co-listening's order within its genre
    at evaluate.py's width and power; sft.py --answer-targets teacher trains toward it beside the plays."""
    import sft
    run, _ = demo_run
    out = tmp_path / "teacher.npz"
    r = subprocess.run([sys.executable, "benchmarks/teacher_targets.py", "--run", run, "--top-k", "5", "--out",
                        str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    t, cc = np.load(out), json.load(open(os.path.join(run, "eval", "results.json")))["content_colisten"]
    assert (float(t["tau"]), float(t["lam"])) == (cc["tau"], cc["lambda"])
    meta = json.load(open(os.path.join(run, "sft_data", "meta.json")))
    catalog, _ = formats.load_catalog(meta["catalog"])
    popularity, cooc, _ = E.load_listening(os.path.join(run, "sft_data"), os.path.join(run, "prefs"), len(catalog))
    x = signals.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])
    genres = B.genre_masks(catalog.genres)
    assert t["rows"].shape == (len(catalog), 5) and np.allclose(t["probs"].sum(1), 1.0)
    for c in (0, 7):
        in_genre = genres[catalog.genres[c][0]]
        s = B.content_colisten_scores(x, c, popularity, B.colisten_counts(cooc, c, len(catalog)), in_genre,
                                      cc["tau"], cc["lambda"])
        want = [j for j in np.argsort(-s, kind="stable") if j != c and in_genre[j]][:5]
        assert t["rows"][c].tolist() == want
    r = subprocess.run([sys.executable, "sft.py", "--data", os.path.join(run, "sft_data"), "--out",
                        str(tmp_path / "sft"), "--model", tiny_smol, "--steps", "2", "--batch-size", "4",
                        "--eval-every", "2", "--answer-targets", "teacher"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "--answer-targets teacher needs --teacher" in r.stderr
    r = subprocess.run([sys.executable, "sft.py", "--data", os.path.join(run, "sft_data"), "--out",
                        str(tmp_path / "sft"), "--model", tiny_smol, "--steps", "2", "--batch-size", "4",
                        "--eval-every", "2", "--answer-targets", "teacher", "--teacher", str(out)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.exists(tmp_path / "sft" / "adapter" / "adapter_model.safetensors")


def test_pair_runs_on_the_same_queries(demo_run, tmp_path):
    """benchmarks/pair_runs.py: DPO of the run against its SFT gives report.md's own paired rows (same values,
    same bootstrap); a run evaluated on other queries, or a system it lacks, is refused with one line."""
    run, _ = demo_run
    results = json.load(open(os.path.join(run, "eval", "results.json")))
    cmd = [sys.executable, "benchmarks/pair_runs.py", f"{run}:DPO", f"{run}:SFT", "--n-boot", "50"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    fmt = lambda d: f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"
    for label, key in (("next_track hit@10", "next_track: DPO - SFT (hit@10)"),
                       ("attributes precision@10", "attributes: DPO - SFT (precision@10)"),
                       ("preference accuracy", "preferences: DPO - SFT (accuracy)"),
                       ("hallucinated@1", "hallucination: DPO - SFT (hallucinated@1)")):
        line = next(l for l in r.stdout.splitlines() if l.startswith(label))
        assert line.endswith(fmt(results["paired"][key])), (line, results["paired"][key])
    other = tmp_path / "results.json"                       # the same run, as if its attribute requests differed
    results["per_query"]["keys"]["attributes"] = "0" * 16
    other.write_text(json.dumps(results))
    r = subprocess.run(cmd[:2] + [f"{other}:SFT", f"{run}:SFT"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "attributes: the two runs were evaluated on other queries" in r.stderr
    assert r.stderr.count("\n") == 1
    r = subprocess.run(cmd[:2] + [f"{run}:NOPE", f"{run}:SFT"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "no system 'NOPE'" in r.stderr and r.stderr.count("\n") == 1


def test_world_ceiling_on_the_run(demo_run, tmp_path):
    """benchmarks/world_ceiling.py: the planted model's rows beside every evaluated system, paired on the same
    queries and pairs; results of other queries are refused with one line."""
    run, _ = demo_run
    out = tmp_path / "ceiling.json"
    cmd = [sys.executable, "benchmarks/world_ceiling.py", "--run", run, "--n-boot", "50"]
    r = subprocess.run(cmd + ["--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    table = json.load(open(out))
    rows = {(t, row["system"], row["metric"]): row for t, v in table.items() for row in v}
    for task, metric in (("next_track", "hit@10"), ("next_track", "ndcg@10"), ("preferences", "accuracy")):
        known = rows[(task, "planted, listener known", metric)]
        sft = rows[(task, "SFT", metric)]
        assert 0 <= known["mean"] <= 1 and known["planted_known_minus"] is None
        assert sft["planted_known_minus"][0] == pytest.approx(known["mean"] - sft["mean"])
    results = json.load(open(os.path.join(run, "eval", "results.json")))
    results["per_query"]["keys"]["next_track"] = "0" * 16
    other = tmp_path / "results.json"
    other.write_text(json.dumps(results))
    r = subprocess.run(cmd + ["--results", str(other)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "evaluated on other next_track queries" in r.stderr and r.stderr.count("\n") == 1


def test_listener_prefs_on_the_run(demo_run, tmp_path):
    """benchmarks/listener_prefs.py: the rate's row is evaluate.py's long-listen rate on the same test pairs, the
    SFT and DPO rows are the run's own; results of other pairs are refused with one line."""
    run, _ = demo_run
    out = tmp_path / "listener.json"
    cmd = [sys.executable, "benchmarks/listener_prefs.py", "--run", run, "--n-boot", "50"]
    r = subprocess.run(cmd + ["--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    table = json.load(open(out))["table"]
    results = json.load(open(os.path.join(run, "eval", "results.json")))
    for name, mine in (("long-listen rate", "long-listen rate"), ("SFT", "SFT"), ("DPO", "DPO")):
        assert table[mine]["accuracy"][0] == pytest.approx(results["preference_accuracy"][name]["mean"])
    for name in ("listener-aware (all four)", "rate + the listener's genres", "rate + the listener's taste centre"):
        acc, d = table[name]["accuracy"], table[name]["minus_rate"]
        assert 0 <= acc[0] <= 1 and d[0] == pytest.approx(acc[0] - table["long-listen rate"]["accuracy"][0])
    results["per_query"]["keys"]["preferences"] = "0" * 16
    other = tmp_path / "results.json"
    other.write_text(json.dumps(results))
    r = subprocess.run(cmd + ["--results", str(other)], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "evaluated on other preference pairs" in r.stderr and r.stderr.count("\n") == 1


def test_sigkill_during_sft_resumes_to_the_same_adapter(demo_run, tiny_smol, tmp_path):
    run, _ = demo_run
    extra = {"SFT_STEPS": "40", "SFT_ARGS": "--eval-every 2 --eval-examples 4 --micro-batch-size 2"}
    # the uninterrupted reference, from the same earlier stages
    ref = tmp_path / "ref"
    os.makedirs(ref)
    for stage in ("world", "rvq", "sft_data"):
        subprocess.run(["cp", "-a", os.path.join(run, stage), str(ref)], check=True)
    killed = tmp_path / "killed"
    subprocess.run(["cp", "-a", str(ref), str(killed)], check=True)
    target = "{}/sft/summary.json"
    assert make(target.format(ref), str(ref), tiny_smol, extra).returncode == 0
    proc = make(target.format(killed), str(killed), tiny_smol, extra, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
    ckpt = killed / "sft" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)                 # the whole make process group, mid-run
    proc.wait()
    assert not (killed / "sft" / "summary.json").exists()
    r = make(target.format(killed), str(killed), tiny_smol, extra)
    assert r.returncode == 0, r.stderr
    a, b = adapter(ref / "sft" / "adapter"), adapter(killed / "sft" / "adapter")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_mismatched_inputs_stop_before_work(demo_run, tiny_smol, tiny_llama, tmp_path):
    run, _ = demo_run
    # an adapter trained on another ID table
    other = tmp_path / "ids.tsv"
    lines = open(os.path.join(run, "rvq/semantic_ids.tsv")).read().splitlines()
    a, b = lines[1].split("\t"), lines[2].split("\t")
    lines[1], lines[2] = "\t".join([a[0]] + b[1:]), "\t".join([b[0]] + a[1:])   # two tracks swap IDs
    other.write_text("\n".join(lines) + "\n")
    import model as M
    with pytest.raises(M.UserError, match="another Semantic-ID table"):
        M.load_policy(tiny_smol, adapter=os.path.join(run, "sft/adapter"), id_table_sha=M.file_sha256(str(other)))
    # a run folder from another base model
    r = subprocess.run([sys.executable, "ask.py", "--run", run, "--model", tiny_llama, "x"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "trained on another base model" in r.stderr and r.stderr.count("\n") == 1


def test_unwritable_output_is_one_line_error(demo_run, tmp_path):
    run, _ = demo_run
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")             # root can write anywhere, but not into a file
    r = subprocess.run([sys.executable, "rvq.py", "train", "--catalog", os.path.join(run, "world/catalog.csv"),
                        "--out", str(blocker / "rvq"), "--codebook-size", "8"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot write" in r.stderr, r.stderr
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    if not os.access(ro, os.W_OK):     # a read-only folder, where the user is not root
        r = subprocess.run([sys.executable, "rvq.py", "train", "--catalog", os.path.join(run, "world/catalog.csv"),
                            "--out", str(ro / "rvq"), "--codebook-size", "8"], cwd=ROOT, capture_output=True,
                           text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot write" in r.stderr


def test_real_catalogue_through_the_same_commands(shared_data, tiny_smol, tmp_path):
    """The real-format path through the Makefile: the real Spotify Tracks rows in ../shared/data as CATALOG
    (duplicated track_ids, 113 genres), listening simulated over that very catalogue (`world.py listen`, the
    Music4All-Onion layout and Music4All id tables) as LOGS, every stage through evaluation."""
    real = os.path.join(shared_data, "spotify_tracks", "union_8325.csv")
    logs = tmp_path / "listen"
    r = subprocess.run([sys.executable, "world.py", "listen", "--catalog", real, "--out", str(logs),
                        "--users", "40", "--seed", "3"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run = tmp_path / "run"
    r = make("demo", str(run), tiny_smol, {"CATALOG": real, "LOGS": str(logs / "userid_trackid_timestamp.tsv"),
                                           "ID_INFO": str(logs / "id_information.csv"),
                                           "ID_META": str(logs / "id_metadata.csv"), "CODEBOOK": "32",
                                           "EVAL_ARGS": TINY["EVAL_ARGS"] + " --no-minilm"})   # 8k texts: slow
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert not (run / "world").exists()                          # nothing synthetic was generated
    meta = json.load(open(run / "sft_data" / "meta.json"))
    cat = meta["catalog_report"]
    assert cat["rows_read"] == 8325 and cat["kept"] == 7991      # SOURCES.md: 7,991 unique track_ids
    assert meta["log"]["format"] == "onion" and meta["log"]["match_rate"] == 1.0
    ids = open(run / "rvq" / "semantic_ids.tsv").read().splitlines()[1:]
    assert len(ids) == 7991 and len({l.split("\t", 1)[1] for l in ids}) == 7991   # unique despite duplicates
    assert json.load(open(run / "prefs" / "report.json"))["pairs"]["test"] > 0
    assert "next_track" in r.stdout and (run / "eval" / "report.md").exists()


def test_content_examples_copy_the_sft_data_and_add_examples(demo_run, tiny_smol, tmp_path):
    """benchmarks/content_examples.py on the run: a new SFT data folder, the training set plus the examples drawn
    from the audio features, everything else as it was; an existing folder is refused in one line; --check scores
    an adapter on the sounds prompts."""
    run, _ = demo_run
    src, out = os.path.join(run, "sft_data"), str(tmp_path / "kernel")
    cmd = [sys.executable, "benchmarks/content_examples.py", "--sft-data", src, "--out", out, "--examples", "30"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    train = open(os.path.join(src, "train.jsonl")).readlines()
    merged = open(os.path.join(out, "train.jsonl")).readlines()
    assert len(merged) == len(train) + 30
    assert sum(json.loads(l)["task"] == "content" for l in merged) == 30
    assert sorted(l for l in merged if json.loads(l)["task"] != "content") == sorted(train)
    for name in ("val.jsonl", "test_next.jsonl", "meta.json"):
        assert open(os.path.join(out, name)).read() == open(os.path.join(src, name)).read()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "exists" in r.stderr
    r = subprocess.run([sys.executable, "benchmarks/content_examples.py", "--sft-data", src, "--check",
                        f"{run}/sft/adapter", "--model", tiny_smol, "--check-tracks", "4", "--neighbours", "3"],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    found = re.search(r"sounds prompts of 4 tracks: the 3 nearest of the genre in its top 3 ([\d.]+); with the "
                      r"context ID swapped ([\d.]+); top 3 kept ([\d.]+)", r.stdout)
    assert found and all(0 <= float(x) <= 1 for x in found.groups())


def test_track_vectors_ride_in_the_adapter_through_dpo_and_ask(demo_run, tiny_smol, tmp_path):
    """sft.py --track-vectors on the run: rvq.py's vectors of its tracks go into the adapter with a trained
    projection; DPO from it keeps both as SFT left them (it trains the LoRA and the ID rows); ask.py's prompt for
    "something like X" reads X's vector."""
    import dpo
    import sft
    run, _ = demo_run
    track_ids, codes = formats.load_semantic_ids(os.path.join(run, "rvq", "semantic_ids.tsv"))
    vectors = rvq.load_track_vectors(os.path.join(run, "rvq"), len(track_ids))
    sft.main(["--data", os.path.join(run, "sft_data"), "--out", str(tmp_path / "sft"), "--model", tiny_smol,
              "--steps", "2", "--batch-size", "4", "--micro-batch-size", "4", "--eval-every", "2",
              "--eval-examples", "8", "--track-vectors", "--track-lr", "0.1"])
    s = adapter(tmp_path / "sft" / "adapter")
    assert torch.equal(s["track_features.vectors"], vectors)
    assert (s["track_features.codes"].numpy() == codes).all() and s["track_features.proj.weight"].abs().sum() > 0
    dpo.main(["--pairs", os.path.join(run, "prefs"), "--sft", str(tmp_path / "sft" / "adapter"), "--model",
              tiny_smol, "--out", str(tmp_path / "dpo"), "--steps", "2", "--batch-size", "2", "--micro-batch-size",
              "2", "--eval-every", "2", "--eval-pairs", "6", "--lr", "1e-2", "--warmup-steps", "1", "--select", "last"])
    d = adapter(tmp_path / "dpo" / "adapter")
    assert all(torch.equal(d[k], s[k]) for k in s if k.startswith("track_features."))
    assert not torch.equal(d["embed_tokens.new_rows"], s["embed_tokens.new_rows"])
    rec = ask.Recommender(run, str(tmp_path / "dpo" / "adapter"), tiny_smol, "cpu")
    cat = rec.catalog
    ranked, prompt, named = rec.ask(f"something like {tasks.display_artist(cat.artists[2])} - {cat.track_name[2]}")
    assert named == 2 and len(ranked) == ask.TOP_K
    enc = rec.fmt.prompt(prompt)
    at = enc.index(rec.vocab.track_token)
    assert tuple(rec.vocab.level_code(t)[1] for t in enc[at - 3:at]) == rec.row_codes[2]
    emb = rec.model.get_input_embeddings()
    proj = emb.track_features.proj
    want = proj(vectors[track_ids.index(cat.track_id[2])])
    assert torch.allclose(emb(torch.tensor([enc]))[0, at], want, atol=1e-5)
    shown = ask.answer(rec, f"something like {tasks.display_artist(cat.artists[2])} - {cat.track_name[2]}", (), 2)
    assert shown["prompt"] == prompt.replace(formats.id_text(rec.row_codes[2]),
                                             formats.id_text(rec.row_codes[2]) + "<track>")
