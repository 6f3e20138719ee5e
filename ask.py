"""Ask the trained model for music, in plain words.

    python ask.py --run runs/demo "upbeat dance tracks for a party"
    python ask.py --run runs/demo "something like Artist Name - Song Title" --adapter dpo -k 5

A request naming a track ("something like {artist} - {title}", "more like ...", or its track_id, as
such or as a Spotify link: spotify:track:ID, https://open.spotify.com/track/ID) is looked up in
the catalogue and sent in the SFT next-track format: the track's genre and Semantic ID, or whatever
the model was trained with (sft_data/meta.json, context_text); anything else is sent as written.
--played names what you listened to before it, oldest
first ("Artist - Title", a track_id or a Semantic ID such as <a_1><b_2><c_3>); the prompt shows as many of
those plays as the model was trained with (sft_data/meta.json: prompt_history). The answer is the
model's top K catalogue tracks, scored exactly over the ID trie (constrained beam search for a
catalogue above 20,000 tracks), so every one exists, with name, artists, genres and ID.

    python ask.py --run runs/demo --played "A - One" --played "B - Two" "something like C - Three"

Without a request it reads one a line from standard input and loads the model once (a `request> ` prompt on a
terminal; `quit` or end of input stops); --json prints each answer as one JSON object a line, for programs:

    printf 'upbeat rock for a party\nsomething like C - Three\n' | python ask.py --run runs/demo --json
"""
import argparse
import json
import os
import re
import sys

import formats
import model as M
import ranking
import tasks
from common import UserError, read_json, run_main

# -----------------------------------------------------------------------------
TOP_K: int = 10               # tracks to show
EXACT_MAX_ITEMS: int = 20_000   # rank exactly up to this many tracks (evaluate.py's default), beam search above
# sft, dpo, base, or an adapter folder. sft: on the test windows of three worlds it ranks attribute requests
# 0.022-0.025 better than dpo and next tracks within the noise of it; dpo ranks listening preferences better
# (README, "What this says")
ADAPTER: str = "sft"
# "something like X", "more like X", "similar to X": X may name a catalogue track
LIKE_RE = re.compile(r"^\s*(?:something|songs?|tracks?|music)?\s*(?:like|similar to|more like)\s+(.+?)[\s.!?]*$",
                     re.IGNORECASE)
# a catalogue track_id as such, or as Spotify's app and web share it: spotify:track:ID, open.spotify.com/track/ID?si=..
TRACK_ID_RE = re.compile(r"^(?:spotify:track:|(?:https?://)?open\.spotify\.com/(?:intl-[\w-]+/)?track/)?(\w+)"
                         r"(?:\?\S*)?$")
# -----------------------------------------------------------------------------


def find_track(catalog, text):
    """Catalogue row named by 'Artist - Title', a unique 'Title' or its track_id (also as a Spotify link), else None.

    Example: "Fire Tanaka - Into the Harbor", "Into the Harbor", "qHhlGLUD0A2eKqltfiOvff",
    "spotify:track:qHhlGLUD0A2eKqltfiOvff" and "https://open.spotify.com/track/qHhlGLUD0A2eKqltfiOvff?si=1f"
    all name one row of the demo's catalogue.
    """
    m = TRACK_ID_RE.match(text.strip())
    row = catalog.index().get(m.group(1)) if m else None
    if row is not None:
        return row
    if " - " in text:
        artist, title = text.split(" - ", 1)
        row = catalog.key_index().get(formats.norm_key(artist, title))
        if row is not None:
            return row
    wanted = formats.norm_key("", text).split("|", 1)[1]
    hits = [i for i, k in enumerate(catalog.keys()) if k.split("|", 1)[1] == wanted]
    return hits[0] if len(hits) == 1 else None


def played_row(text, catalog, row_codes):
    """Catalogue row of a --played entry: 'Artist - Title', a unique 'Title', a track_id or a Semantic ID text."""
    codes = M.IDVocab(len(next(iter(row_codes.values()))), 1 << 30, 0).parse(text.strip())
    if codes is not None:
        row = {c: r for r, c in row_codes.items()}.get(codes)
    else:
        row = find_track(catalog, text)
    if row is None:
        raise UserError(f"--played {text!r}: no such track in the catalogue ('Artist - Title', a track_id or an "
                        f"ID like {formats.id_text(next(iter(row_codes.values())))})")
    return row


def build_prompt(request, catalog, row_codes, played=(), n_history=1, context_text="name"):
    """(prompt text, row of the named track or None). played: rows heard before it, oldest first;
    n_history and context_text as the SFT data were built with (tasks.next_track_prompt)."""
    m = LIKE_RE.match(request)
    if m:
        row = find_track(catalog, m.group(1))
        if row is not None:
            return tasks.next_track_prompt(catalog, list(played) + [row], row_codes, n_history=n_history,
                                           context_text=context_text), row
    if played:
        raise UserError("--played needs a request naming a catalogue track (\"something like Artist - Title\"), "
                        "the play it comes before")
    return request, None


def unknown_words_note(request, catalog):
    """A one-line note when a free-text request uses none of the words the model was trained on, else None.

    Attribute requests were built from this catalogue's genres and tasks.ATTRIBUTES phrases only ("chill acoustic
    piano for studying"); a request with none of them ("some jazz" where no track is jazz) still gets K tracks, but
    they say nothing about the request, and a user should be told so; "something like X" where no track is X
    says that first (a misspelt name, most likely).
    """
    grounding = re.sub(r"^\s*(?:play|put on)\s+|[\s.!?]+$", "", request, flags=re.IGNORECASE)
    if find_track(catalog, grounding) is not None:   # "Play Artist - Title": the grounding task, trained too
        return None

    def norm(t):   # "Hip-Hop!" and "hip hop" alike
        return " " + " ".join(re.findall(r"[a-z0-9]+", t.lower())) + " "
    text = norm(request)
    genres = sorted({g for gs in catalog.genres for g in gs})
    words = genres + [phrase for phrase, _, _ in tasks.ATTRIBUTES.values()] + ["bpm"]
    if any(norm(w) in text for w in words):
        return None
    like = LIKE_RE.match(request)   # "something like X" with no track X: a misspelt name, most likely
    named = (f"no catalogue track is named {like.group(1)!r} ('Artist - Title', a unique title or a track_id), and "
             if like else "")
    return (f"note: {named}the request names none of this catalogue's {len(genres)} genres ({', '.join(genres[:8])}"
            f"{', ...' if len(genres) > 8 else ''}) nor an attribute the model was trained on (e.g. "
            f"{', '.join(phrase for phrase, _, _ in list(tasks.ATTRIBUTES.values())[:4])}): these tracks are a guess")


def resolve_adapter(run, name):
    if name == "base":
        return None
    path = os.path.join(run, name, "adapter") if name in ("sft", "dpo") else name
    if not os.path.exists(os.path.join(path, M.ID_VOCAB_FILE)):
        raise UserError(f"{path}: no trained adapter there (run `make demo`, or pass --adapter sft|dpo|base|PATH)")
    return path


def trained_base(run, adapter_path):
    """The base model folder the run was trained on: the adapter's record (id_vocab.json), else the run's SFT
    options; None when neither names one."""
    if adapter_path is not None:
        base = read_json(os.path.join(adapter_path, M.ID_VOCAB_FILE), "adapter's id_vocab.json").get("base_model")
        if base:
            return base
    cfg = os.path.join(run, "sft", "config.json")
    return read_json(cfg, "run's SFT options").get("model") if os.path.exists(cfg) else None


class Recommender:
    """A run's catalogue, Semantic IDs and model, loaded once; ask() answers one request at a time.

    run: a run folder made by `make demo`; adapter: sft, dpo, base or an adapter folder; model_path None: the base
    the run was trained on (the adapter's record, else the run's SFT options)."""

    def __init__(self, run, adapter=ADAPTER, model_path=None, device="auto"):
        if not os.path.isdir(run):
            raise UserError(f"{run}: no such run folder")
        adapter_path = resolve_adapter(run, adapter)
        model_path = model_path or trained_base(run, adapter_path) or M.DEFAULT_MODEL
        self.meta = read_json(os.path.join(run, "sft_data", "meta.json"), "run's sft_data/meta.json")
        self.catalog, _ = formats.load_catalog(self.meta["catalog"])
        track_ids, codes = formats.load_semantic_ids(self.meta["semantic_ids"])
        self.row_codes = formats.row_codes_of(self.catalog, track_ids, codes)
        self.id_to_row = {c: r for r, c in self.row_codes.items()}
        self.device = M.pick_device(device)
        self.model, tok, self.vocab = M.load_policy(
            model_path, adapter=adapter_path, levels=self.meta["levels"], codebook_size=self.meta["codebook_size"],
            id_table_sha=self.meta["id_table_sha256"], device=self.device)
        self.fmt, self.pad_id = M.PromptFormat(tok, self.vocab), M.pad_id_of(tok)
        self.trie = ranking.IDTrie(list(self.id_to_row), self.vocab.levels)

    def ask(self, request, played=(), k=TOP_K):
        """Top-k [(row, score, codes)] for a request, the prompt sent and the row of the track the request named
        (None if it named none). played: 'Artist - Title' or ID texts heard before that track, oldest first."""
        played = [played_row(t, self.catalog, self.row_codes) for t in played]
        # as the SFT data were built; data written before the context_text option showed names
        prompt, named = build_prompt(request, self.catalog, self.row_codes, played,
                                     self.meta.get("prompt_history", 1), self.meta.get("context_text", "name"))
        ids = [self.fmt.prompt(prompt)]
        heard = set(played) | ({named} if named is not None else set())
        width = k + len(heard)   # enough that k remain once the heard tracks are dropped
        if len(self.id_to_row) <= EXACT_MAX_ITEMS:   # the model's true top k (as evaluate.py ranks)
            res = ranking.exact_top_k(self.model, ids, self.vocab, self.trie, width, device=self.device,
                                      pad_id=self.pad_id)[0]
        else:
            res = [(tuple(self.vocab.level_code(t)[1] for t in toks), score) for toks, score in
                   ranking.beam_search(self.model, ids, self.vocab, width, trie=self.trie, pad_id=self.pad_id,
                                       device=self.device)[0]]
        return drop_heard(res, self.id_to_row, heard, k), prompt, named


def drop_heard(ranked, id_to_row, heard, k):
    """The first k of ranked [(codes, score)], best first, whose track is not in heard: [(row, score, codes)].

    heard: the rows of the track the request names and of the --played tracks; a listener asking for more has just
    heard them (evaluate.py likewise never counts the context track as an answer). E.g. ranked [(a, -1), (b, -2),
    (c, -3)] with b's row heard and k 2 -> [(row a, -1, a), (row c, -3, c)].
    """
    out = [(id_to_row[c], score, c) for c, score in ranked if id_to_row[c] not in heard]
    return out[:k]


def answer(rec, request, played, k):
    """The answer to one request as a dict (what --json prints; the text form is made from it too)."""
    results, prompt, named = rec.ask(request, played, k)
    cat = rec.catalog
    notes = []
    if played and "Played before:" not in prompt:
        notes.append("note: this model was trained on prompts that show the context track alone (data.py sft "
                     "--prompt-history 1), so the --played tracks are not in the prompt")
    note = unknown_words_note(request, cat) if named is None else None
    if note:
        notes.append(note)

    def track(row):
        return {"track_id": cat.track_id[row], "artists": tasks.display_artist(cat.artists[row]),
                "name": cat.track_name[row], "genres": list(cat.genres[row]),
                "semantic_id": formats.id_text(rec.row_codes[row])}
    if rec.vocab.track_token is not None:   # show what the model reads: each full ID's track vector (<track>)
        prompt = rec.fmt.decode(rec.fmt.with_track_tokens(rec.fmt.encode_text(prompt)))
    return {"request": request, "played": list(played), "prompt": prompt, "notes": notes,
            "context_track": None if named is None else track(named),
            "tracks": [{"rank": i, **track(row), "logp": round(float(score), 4)}
                       for i, (row, score, _) in enumerate(results, 1)]}


def print_answer(a):
    for note in a["notes"]:
        print(note)
    print(f"prompt: {a['prompt']}")
    c = a["context_track"]
    if c is not None:   # the prompt shows the track's ID, not its name
        print(f"context track: {c['artists']} - {c['name']}  [{', '.join(c['genres'])}]")
    for t in a["tracks"]:
        print(f"{t['rank']:>2}. {t['artists']} - {t['name']}  [{', '.join(t['genres'])}]  {t['semantic_id']}  "
              f"log p = {t['logp']:.2f}")


def requests_from(stream, interactive):
    """Requests read one a line (blank lines skipped) until end of input or `quit`; a `request> ` prompt on a
    terminal."""
    while True:
        if interactive:
            print("request> ", end="", flush=True)
        line = stream.readline()
        if not line or line.strip().lower() in ("quit", "exit"):
            return
        if line.strip():
            yield line.strip()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("request", nargs="?", default=None,
                   help='e.g. "chill acoustic music for studying" or "something like Artist - Title"; without it '
                        "(or -), one request a line from standard input, the model loaded once")
    p.add_argument("--run", default="runs/demo", help="run folder made by `make demo`")
    p.add_argument("--adapter", default=ADAPTER, help="sft, dpo, base, or an adapter folder")
    p.add_argument("-k", type=int, default=TOP_K, help="number of tracks")
    p.add_argument("--model", default=None, help="base model the adapter was trained on (default: the one its "
                                                 "id_vocab.json records, so a run's own model, e.g. the demo's "
                                                 "15-layer cut)")
    p.add_argument("--played", action="append", default=[],
                   help="a track heard before the one the request names (repeat, oldest first): "
                        "'Artist - Title', a track_id (or Spotify link) or a Semantic ID; never among the answers, "
                        "as the named track is not")
    p.add_argument("--json", action="store_true",
                   help="print each answer as one JSON object (request, prompt, notes, context_track, tracks with "
                        "track_id, artists, name, genres, semantic_id, logp) instead of text, for programs")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    args = p.parse_args(argv)
    if args.k < 1:
        p.error("-k must be at least 1")
    rec = Recommender(args.run, args.adapter, args.model, args.device)
    show = (lambda a: print(json.dumps(a), flush=True)) if args.json else print_answer
    if args.request not in (None, "-"):
        show(answer(rec, args.request, args.played, args.k))
        return
    # one request a line: one that cannot be answered (--played beside a request that names no track) is said in
    # one line on stderr, and the rest are answered
    interactive = sys.stdin.isatty() and not args.json
    failed = 0
    for i, request in enumerate(requests_from(sys.stdin, interactive), 1):
        try:
            show(answer(rec, request, args.played, args.k))
        except UserError as e:
            failed += 1
            print(f"error: request {i} ({request!r}): {e}", file=sys.stderr, flush=True)
        if not args.json:
            print(flush=True)
    if failed:
        sys.exit(2)


if __name__ == "__main__":
    run_main(main)
