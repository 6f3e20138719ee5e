"""The ablation table from finished rows, and its one-line errors (the rows themselves are demo runs)."""
import json
import os
import subprocess

import pytest

import ablation
from common import UserError


def fake_results(folder, sft_hit):
    s = lambda m: {"mean": m, "lo": m - 0.05, "hi": m + 0.05}
    systems = {"SFT": {"hit@10": s(sft_hit), "ndcg@10": s(sft_hit / 2)}, "DPO": {"hit@10": s(0.1), "ndcg@10": s(0.05)},
               "SASRec": {"hit@10": s(0.45), "ndcg@10": s(0.25)}}
    res = {"ranking": {"next_track": systems, "attributes": {"SFT": {"precision@10": s(0.2)}}},
           "preference_accuracy": {"SFT": s(0.6), "DPO": s(0.7)},
           "strongest_baseline": {"next_track": {"name": "SASRec", "metric": "hit@10"}},
           "hallucination": {"SFT": {"hallucinated@1": 0.125}, "DPO": {"hallucinated@1": 0.5}},
           "paired": {"next_track: DPO - SFT (hit@10)": {"mean": 0.1 - sft_hit, "lo": 0.05 - sft_hit,
                                                         "hi": 0.15 - sft_hit}}}
    os.makedirs(os.path.join(folder, "eval"))
    json.dump(res, open(os.path.join(folder, "eval", "results.json"), "w"))
    open(os.path.join(folder, "eval", "report.md"), "w").write("done\n")


def test_table_from_finished_rows(tmp_path, capsys):
    fake_results(tmp_path / "audio", 0.09)
    fake_results(tmp_path / "default", 0.275)
    json.dump({"audio": 1200.0}, open(tmp_path / "seconds.json", "w"))
    ablation.main(["--out", str(tmp_path), "--rows", "audio,default,history", "--table-only"])
    md = (tmp_path / "ablation.md").read_text().splitlines()
    assert len(md) == 4                                                      # header, rule, two finished rows
    assert md[2].startswith("| audio |") and "0.090 [0.04, 0.14]" in md[2] and md[2].endswith("| 20.0 |")
    assert md[3].startswith("| default |") and "SASRec 0.450 [0.40, 0.50]" in md[3] and md[3].endswith("| - |")
    assert "| 12.5% / 50.0% |" in md[3] and "| -0.175 [-0.225, -0.125] |" in md[3]
    rows = json.load(open(tmp_path / "ablation.json"))
    assert [r["row"] for r in rows] == ["audio", "default"] and rows[1]["sft_hit@10"]["mean"] == 0.275
    assert ablation.run_row("audio", str(tmp_path), 0, {}) is None           # finished: not run again


def test_errors(tmp_path):
    with pytest.raises(UserError, match="unknown row"):
        ablation.main(["--out", str(tmp_path), "--rows", "audio,nope", "--table-only"])
    with pytest.raises(UserError, match="VAR=VALUE"):
        ablation.main(["--out", str(tmp_path), "--rows", "audio", "--set", "SFT_STEPS", "--table-only"])
    with pytest.raises(UserError, match="reuses the SFT of row names"):
        ablation.run_row("dpo", str(tmp_path), 0, {})


def test_dpo_row_keeps_the_copied_stages(tmp_path, monkeypatch):
    """A DPO row copies its base row's stages; they must be dated after the stamps `make -n` writes, or the row's
    `make demo` would rerun the world, the IDs and SFT (20 minutes) for nothing."""
    base = tmp_path / "names"
    for stage in ("world", "rvq", "sft_data", "sft", "sasrec", "prefs", "dpo", "eval"):
        os.makedirs(base / stage)
        (base / stage / "out.json").write_text("{}")
    os.utime(base / "sft" / "out.json", (1, 1))      # an old copy: what make would see as stale
    (base / "sft" / "summary.json").write_text("{}")
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        if "-n" in cmd:      # make -n writes the row's stamps at parse time
            os.makedirs(tmp_path / "dpo" / ".stamps", exist_ok=True)
            (tmp_path / "dpo" / ".stamps" / "sft").write_text("cmd\n")
        return type("R", (), {"returncode": 0})()

    monkeypatch.setattr(ablation.subprocess, "run", fake_run)
    ablation.run_row("dpo", str(tmp_path), 0, {})
    row = tmp_path / "dpo"
    assert [("-n" in c) for c in calls] == [True, False]              # stamps first, then the real make
    assert not (row / "dpo").exists() and not (row / "eval").exists()   # retrained, not copied
    stamp = os.path.getmtime(row / ".stamps" / "sft")
    for stage in ("world", "rvq", "sft_data", "sft", "sasrec"):
        assert os.path.getmtime(row / stage / "out.json") >= stamp


def test_rows_before_grouped_keep_the_dpo_they_ran_with():
    """The demo's DPO changed on 2026-12-02 (grouped steps from every training pair, the final weights; then beta
    0.5): each row pins the DPO it ran with, so `make demo` gives it the command lines it ran with (its stamps
    hold)."""
    names = [n for n in ablation.ROWS if not n.startswith("demo")]   # the history; the demo rows are today's
    assert names[-3:] == ["grouped", "beta", "colisten"] and ablation.ROWS["grouped"][2] == "quality"
    assert ablation.ROWS["beta"][2] == "grouped"
    for name in names[:-3]:
        assert ablation.EARLIER_DPO.items() <= ablation.ROWS[name][1].items(), name
    # the SFT targets changed after `beta` (group targets): every row before pins the one-hot answers it ran with
    for name in names[:-1]:
        assert ablation.ROWS[name][1]["SFT_TARGETS"] == "example", name
    colisten = ablation.ROWS["colisten"][1]
    assert colisten["SFT_TARGETS"] == "colisten" and {k: v for k, v in colisten.items() if k != "SFT_TARGETS"} == \
        {k: v for k, v in ablation.ROWS["grouped"][1].items() if k != "SFT_TARGETS"}
    grouped, quality, beta = (ablation.ROWS[n][1] for n in ("grouped", "quality", "beta"))
    assert {k: v for k, v in grouped.items() if k not in ablation.EARLIER_DPO} == \
        {k: v for k, v in quality.items() if k not in ablation.EARLIER_DPO}   # the same SFT: a DPO row
    assert grouped["DPO_BETA"] == "0.1" and {k: v for k, v in beta.items() if k != "DPO_BETA"} == \
        {k: v for k, v in grouped.items() if k != "DPO_BETA"} and beta["DPO_BETA"] == "0.5"


def test_every_row_so_far_keeps_the_40_unconstrained_prompts_it_ran_with():
    """The demo decodes every test prompt since 2026-12-03; the rows measured before pin the 40 they decoded, so
    `make demo` gives each the evaluate.py command it ran with, and its hallucinated@1 is the one in the table."""
    for name, (_, variables, _) in ablation.ROWS.items():
        assert variables["HALLUCINATION_PROMPTS"] == ("0" if name.startswith("demo") else "40"), name


def makefile_defaults():
    """VAR ?= value lines of the Makefile: the options `make demo` runs with."""
    out = {}
    for line in open(os.path.join(os.path.dirname(ablation.__file__), "Makefile")):
        if "?=" in line and not line.startswith(("#", "\t")):
            name, value = line.split("?=", 1)
            out[name.strip()] = value.strip()
    return out


def test_demo_row_is_make_demo():
    # the `demo` row spells out today's demo; when a default changes, the row (and its figures) must be redone
    defaults = makefile_defaults()
    demo = ablation.ROWS["demo"][1]
    # but for the test window: the rows rank the 200 next-track queries the demo ranked until 2026-12-07
    assert {k: defaults[k] for k in demo if k not in ablation.ABLATION_TEST} == \
        {k: v for k, v in demo.items() if k not in ablation.ABLATION_TEST}
    assert (defaults["TEST_NEXT"], defaults["HALLUCINATION_PROMPTS"]) == ("1000", "320")
    assert all(variables["TEST_NEXT"] == "200" for _, variables, _ in ablation.ROWS.values())
    for name, (_, variables, base) in ablation.ROWS.items():
        if name.startswith("demo-") and name != "demo-seed":
            changed = {k for k in demo if variables[k] != demo[k]} | (set(variables) - set(demo))
            assert changed and changed <= {"SIGNALS", "LAST_LEVEL_SIGNALS", "HISTORY", "EVAL_ARGS", "DPO_ARGS",
                                           "PREFS_ARGS", "ATTRIBUTE_EXAMPLES", "SFT_TARGETS", "PROMPT_ID_WEIGHT",
                                           "DPO_BETA", "SFT_REPLAY", "SFT_STEPS"}, name
            assert base is None or base == "demo" or base.startswith("demo-")
            # the quality block is the only one the last code may keep to itself (rvq.py refuses a block not in
            # --signals)
            assert variables["LAST_LEVEL_SIGNALS"] in ("", "quality"), name
            assert "quality" in variables["SIGNALS"] or not variables["LAST_LEVEL_SIGNALS"], name


def test_a_finished_row_is_checked_against_its_options_today(tmp_path):
    """A finished row's figures stand only while its stages' command lines are the row's today: a default of the
    Makefile or a row that changed since (the `demo` row on 2026-12-06) reruns it, and --table-only refuses it."""
    run = tmp_path / "demo-1206"
    fake_results(run, 0.3)
    subprocess.run(ablation.make_command("demo", str(run), 0, {}) + ["-n"], stdout=subprocess.DEVNULL, check=True)
    assert ablation.changed_stages("demo", str(run), 0, {}) == []          # the stamps of today's demo
    assert ablation.changed_stages("demo", str(run), 1, {}) != []          # another world: every stage
    assert ablation.changed_stages("demo-1207", str(run), 0, {}) == ["sft"]   # its steps; make reruns what follows
    assert ablation.changed_stages("demo-1206", str(run), 0, {}) == ["rvq", "sft"]   # and the IDs
    sft = run / ".stamps" / "sft"                                           # `make demo`'s interpreter: the same
    sft.write_text(sft.read_text().replace(ablation.PYTHON, ".venv/bin/python", 1))
    assert sft.read_text().startswith(".venv/bin/python sft.py ")
    assert ablation.changed_stages("demo", str(run), 0, {}) == []
    with pytest.raises(UserError, match=r"ran with other options than row demo-1206 has now \(stages rvq, sft\)"):
        ablation.main(["--out", str(tmp_path), "--rows", "demo-1206", "--table-only"])
    os.rename(run, tmp_path / "demo")
    assert ablation.run_row("demo", str(tmp_path), 0, {}) is None          # finished with its own options
    ablation.main(["--out", str(tmp_path), "--rows", "demo", "--table-only"])
    assert (tmp_path / "ablation.md").read_text().count("| demo |") == 1


def test_paired_table_against_the_demo_row(tmp_path):
    """demo-* rows minus the demo row on the same queries: a constant difference has a zero-width interval; a row
    asked other next-track queries (another key) gets '-' there and still pairs on the rest."""
    def per_query(folder, hits, prefs, next_key="k0"):
        fake_results(folder, 0.3)
        path = os.path.join(folder, "eval", "results.json")
        res = json.load(open(path))
        res["per_query"] = {"keys": {"next_track": next_key, "attributes": "a0", "preferences": "p0"},
                            "next_track": {"SFT": {"hit@10": hits, "ndcg@10": hits},
                                           "DPO": {"hit@10": hits, "ndcg@10": hits}},
                            "attributes": {"SFT": {"precision@10": [0.5, 0.5], "ndcg@10": [0.5, 0.5]}},
                            "preferences": {"DPO": prefs}}
        json.dump(res, open(path, "w"))

    per_query(tmp_path / "demo", [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0])
    per_query(tmp_path / "demo-genre", [1.0, 1.0, 2.0, 1.0], [1.0, 0.0, 1.0])      # +1 on every query
    per_query(tmp_path / "demo-history", [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0], next_key="other")
    ablation.main(["--out", str(tmp_path), "--rows", "demo,demo-genre,demo-history", "--table-only"])
    md = (tmp_path / "ablation.md").read_text()
    genre = next(line for line in md.splitlines() if line.startswith("| demo-genre | +"))
    assert genre.count("+1.000 [+1.000, +1.000]") == 3
    assert genre.endswith("| +0.000 [+0.000, +0.000] | +0.000 [+0.000, +0.000] |")
    history = next(line for line in md.splitlines() if line.startswith("| demo-history | -"))
    assert history.startswith("| demo-history | - | - | - | +0.000 [+0.000, +0.000] | -0.667 [")
    paired = json.load(open(tmp_path / "ablation_paired.json"))
    assert [r["row"] for r in paired] == ["demo-genre", "demo-history"]
    assert paired[0]["SFT next_track hit@10"] == {"mean": 1.0, "lo": 1.0, "hi": 1.0}


def test_default_rows_and_other_worlds(tmp_path, capsys):
    """`make ablation` runs today's demo and its one-change rows; a finished row of another world is refused, so
    rows of two seeds never stand in one table."""
    assert ablation.TODAY[0] == "demo" and all(n.startswith("demo-") for n in ablation.TODAY[1:])
    assert {"demo-audio", "demo-dpo", "demo-seed"} <= set(ablation.TODAY) and "audio" not in ablation.TODAY
    # the demo replays SFT examples in DPO at beta 0.5; demo-1205 (its DPO before) and every row of the history not;
    # demo-1207 is the demo with 480 SFT steps, demo-1206 that with every code reading the long-listen rate, and
    # demo-1205 reuses its SFT
    demo, dec7, dec6, dec5 = (ablation.ROWS[n][1] for n in ("demo", "demo-1207", "demo-1206", "demo-1205"))
    assert (demo["SFT_STEPS"], dec7["SFT_STEPS"]) == ("720", "480")
    assert {**dec7, "SFT_STEPS": "720"} == demo
    assert (demo["SFT_REPLAY"], demo["DPO_BETA"], dec5["SFT_REPLAY"], dec5["DPO_BETA"]) == ("8", "0.5", "0", "0.1")
    assert (demo["LAST_LEVEL_SIGNALS"], dec6["LAST_LEVEL_SIGNALS"]) == ("quality", "")
    assert {k: v for k, v in dec6.items() if k != "LAST_LEVEL_SIGNALS"} == \
        {k: v for k, v in dec7.items() if k != "LAST_LEVEL_SIGNALS"}
    assert {k: v for k, v in dec5.items() if k not in ("SFT_REPLAY", "DPO_BETA")} == \
        {k: v for k, v in dec6.items() if k not in ("SFT_REPLAY", "DPO_BETA")}
    assert ablation.ROWS["demo-1205"][2] == "demo-1206"
    assert all(ablation.ROWS[n][1]["SFT_REPLAY"] == "0" for n in ablation.ROWS if n not in ablation.TODAY)
    fake_results(tmp_path / "demo", 0.33)
    os.makedirs(tmp_path / "demo" / "world")
    json.dump({"seed": 1}, open(tmp_path / "demo" / "world" / "world_config.json", "w"))
    with pytest.raises(UserError, match="seed 1, not --seed 0"):
        ablation.main(["--out", str(tmp_path), "--rows", "demo", "--table-only"])
    with pytest.raises(UserError, match="seed 1, not --seed 0"):     # refused before any row would run
        ablation.main(["--out", str(tmp_path), "--rows", "demo,demo-dpo"])
    ablation.main(["--out", str(tmp_path), "--rows", "demo", "--table-only", "--seed", "1"])
    assert "| demo |" in (tmp_path / "ablation.md").read_text()
