"""The SFT task families in words: what a request says, and which tracks answer it.

Every prompt is answered with a Semantic ID (formats.id_text). data.py samples the examples; ask.py, the
preference pairs and the evaluation build their prompts with the same functions, so the model is always asked as
it was trained.
"""
import numpy as np

from common import UserError
from formats import FEATURES, id_text

# ============================================================================================== SFT examples
# Three task families, all answered with a Semantic ID (`<a_12><b_200><c_7>`):
#   attributes   "chill acoustic jazz for studying" -> a track satisfying every requested attribute
#   grounding    "Play {artist} - {title}"          -> that track's ID (the model must know the catalogue)
#   next_track   "I want to listen to (rock) <a_1><b_2><c_3> or something similar" -> a track listeners played
#                next, for long. The prompt shows the context track by its genre and ID (CONTEXT_TEXT), as TIGER
#                feeds the history as IDs: a 135M model learns to read IDs in a CPU budget, not every name.
# The answer never appears in its prompt. Logs are split by time: train < t_val <= val < t_test <= test.

PROMPT_HISTORY: int = 1       # session plays a prompt shows (1: the context track alone, as the seed)
CONTEXT_TEXT: str = "genre"    # what a next-track prompt shows of its context track: its genre and Semantic ID
                               # ("genre"), the ID alone ("id"), its artist, title, genre and ID ("name"), or its
                               # genre, the attribute phrases that hold for it and its ID ("words").
                               # Against "name", an SFT step costs ~10% less ("id":
                               # ~27%), and with 160 steps instead of 120 "genre" ranks validation next tracks as
                               # well and attribute requests better; "id" ranks next tracks better and attribute
                               # requests far worse: no prompt then puts a genre word beside an ID (EXPERIMENTS.md,
                               # "Shorter prompts")

# (attribute, value) -> (phrase, where it goes, predicate over the (N, 10) feature matrix)
_F = {name: i for i, name in enumerate(FEATURES)}
ATTRIBUTES = {
    ("energy", "high"): ("high-energy", "pre", lambda x: x[:, _F["energy"]] > 0.7),
    ("energy", "low"): ("chill", "pre", lambda x: x[:, _F["energy"]] < 0.4),
    ("mood", "happy"): ("upbeat", "pre", lambda x: x[:, _F["valence"]] > 0.6),
    ("mood", "sad"): ("melancholic", "pre", lambda x: x[:, _F["valence"]] < 0.3),
    ("tempo", "fast"): ("fast", "pre", lambda x: x[:, _F["tempo"]] > 130),
    ("tempo", "slow"): ("slow", "pre", lambda x: x[:, _F["tempo"]] < 90),
    ("dance", "yes"): ("danceable", "pre", lambda x: x[:, _F["danceability"]] > 0.7),
    ("acoustic", "yes"): ("acoustic", "pre", lambda x: x[:, _F["acousticness"]] > 0.6),
    ("instrumental", "yes"): ("instrumental", "pre", lambda x: x[:, _F["instrumentalness"]] > 0.5),
    ("activity", "workout"): ("for a workout", "post",
                              lambda x: (x[:, _F["energy"]] > 0.7) & (x[:, _F["tempo"]] > 120)),
    ("activity", "studying"): ("for studying", "post",
                               lambda x: (x[:, _F["energy"]] < 0.5) & (x[:, _F["speechiness"]] < 0.1)),
    ("activity", "party"): ("for a party", "post",
                            lambda x: (x[:, _F["danceability"]] > 0.7) & (x[:, _F["energy"]] > 0.6)),
    ("activity", "sleep"): ("to fall asleep to", "post",
                            lambda x: (x[:, _F["energy"]] < 0.3) & (x[:, _F["acousticness"]] > 0.5)),
}
BPM_STEP: int = 5              # "around 125 BPM": tempo within +- BPM_STEP of a multiple of BPM_STEP
TRAIN_REQUEST_TEMPLATES = (
    "I need music for a {desc} playlist", "Play something {desc}", "I'm looking for a {desc} song",
    "Can you recommend {desc} tracks?", "Give me some {desc} music", "Put on a {desc} track",
    "Any {desc} songs?", "Recommend a {desc} tune", "I'd like to hear something {desc}", "Find me {desc} music",
)
TEST_REQUEST_TEMPLATES = (  # held out entirely: never seen in training
    "What's a good {desc} track?", "Queue up some {desc} songs", "I'm in the mood for {desc} music",
    "Suggest a {desc} song, please",
)
VAL_REQUEST_TEMPLATES = (  # held out of training and test alike: benchmarks/val_next.py --attribute-phrasings heldout
    "Could you play some {desc} music?", "Show me {desc} songs", "Start a {desc} mix", "Let's hear a {desc} track",
)
GROUNDING_TEMPLATES = ("Play {track}", "{track}", "Put on {track}")
NEXT_TEMPLATES = ("I want to listen to {track} or something similar", "Something like {track}",
                  "More like {track}, please", "Play me songs similar to {track}")
CONTEXT_TEXTS = ("genre", "id", "name", "words")   # next_track_prompt's context_text


def display_artist(artists):
    return ", ".join(a for a in artists.split(";") if a)


def track_text(cat, row, codes=None):
    """'{artist} - {title}'; with codes, the context form '{artist} - {title} ({genre}) <a_1><b_2><c_3>'.

    The context names its primary genre beside the ID: listening continues within a genre far more often
    than within an audio-feature neighbourhood, and the ID alone (audio features) does not say it.
    """
    s = f"{display_artist(cat.artists[row])} - {cat.track_name[row]}"
    return s if codes is None else f"{s} ({cat.genres[row][0]}) {id_text(codes)}"


def next_track_prompt(cat, hist, row_codes, template=None, n_history=1, context_text=CONTEXT_TEXT):
    """The next-track request for a listening history hist (catalogue rows, oldest first; the last is the
    context track): that track by genre and ID (context_text "genre"), by ID alone ("id"), by name, genre
    and ID ("name"), or by genre, attribute phrases and ID ("words": '(rock, high-energy, upbeat) <a_..>...'),
    and with n_history > 1 the plays before it as IDs.

    hist [7, 3] with n_history 2 -> 'Played before: <a_..><b_..><c_..>. I want to listen to (rock)
    <a_..><b_..><c_..> or something similar'; "id": '... listen to <a_..><b_..><c_..> or ...'; "name":
    '... listen to A - T (rock) <a_..><b_..><c_..> or ...'. An ID costs 3 tokens, a name 10 or more: a fixed
    budget of SFT steps sees more examples without names (TIGER feeds its whole history as IDs). The genre
    word beside the ID is what teaches the model which IDs a genre word means (attribute requests), and the
    only genre an ID from the audio features alone carries; "words" puts the attribute phrases of requests
    (tasks.ATTRIBUTES) beside every context ID as well, so that 16,000 next-track prompts, not only the 2,000
    attribute requests, say which IDs are "high-energy" or "for studying".
    """
    if context_text not in CONTEXT_TEXTS:
        raise UserError(f"context text {context_text!r}: expected one of {', '.join(CONTEXT_TEXTS)}")
    prev = hist[-1]
    track = (id_text(row_codes[prev]) if context_text == "id" else
             f"({cat.genres[prev][0]}) {id_text(row_codes[prev])}" if context_text == "genre" else
             f"({', '.join(track_phrases(cat, prev))}) {id_text(row_codes[prev])}" if context_text == "words" else
             track_text(cat, prev, row_codes[prev]))
    text = (template or NEXT_TEMPLATES[0]).format(track=track)
    earlier = list(hist[-n_history:-1]) if n_history > 1 else []
    if earlier:
        text = "Played before: " + " ".join(id_text(row_codes[r]) for r in earlier) + ". " + text
    return text


def attribute_flags(features):
    """(N, 10) raw audio features (formats.FEATURES order) -> (N, A) bool, A = len(ATTRIBUTES): column a is True
    where the track satisfies the a-th request phrase's predicate ("high-energy": energy > 0.7), in ATTRIBUTES order.
    """
    x = np.asarray(features, np.float64)
    return np.stack([np.asarray(pred(x), bool) for _, _, pred in ATTRIBUTES.values()], axis=1)


def attribute_masks(cat):
    """{(attribute, value): (N,) bool} for every attribute, including ('genre', g) for every genre."""
    flags = attribute_flags(cat.features)
    masks = {k: flags[:, j] for j, k in enumerate(ATTRIBUTES)}
    for g in sorted({g for gs in cat.genres for g in gs}):
        masks[("genre", g)] = np.array([g in gs for gs in cat.genres])
    return masks


def bpm_mask(cat, bpm):
    return np.abs(cat.feature("tempo") - bpm) <= BPM_STEP


def describe_request(attrs):
    """'chill acoustic jazz for studying' from [(attribute, value), ...]."""
    pre = [ATTRIBUTES[a][0] for a in attrs if a in ATTRIBUTES and ATTRIBUTES[a][1] == "pre"]
    post = [ATTRIBUTES[a][0] for a in attrs if a in ATTRIBUTES and ATTRIBUTES[a][1] == "post"]
    post += [f"around {v} BPM" for k, v in attrs if k == "bpm"]
    genre = [v for k, v in attrs if k == "genre"]
    return " ".join(pre + genre + post) if (pre or genre) else "music " + " ".join(post)


def describe_track(cat, row):
    """A track's text for the text-similarity baseline: name, artist, genres and words for its features."""
    words = phrases_of(attribute_flags(cat.features[row:row + 1])[0])
    return (f"{cat.track_name[row]} by {display_artist(cat.artists[row])}. Genre: {', '.join(cat.genres[row])}. "
            f"{', '.join(words)}. {cat.feature('tempo')[row]:.0f} BPM.")


def phrases_of(flags):
    """(A,) bool (a row of attribute_flags) -> the phrases that hold, in ATTRIBUTES order."""
    return [phrase for (phrase, _, _), on in zip(ATTRIBUTES.values(), flags) if on]


def track_phrases(cat, row):
    """['rock', 'high-energy', 'upbeat']: a track's primary genre and the attribute phrases that hold for it."""
    return [cat.genres[row][0]] + phrases_of(attribute_flags(cat.features[row:row + 1])[0])


def track_words(cat, row):
    """'rock high-energy upbeat': a track's primary genre and the attribute phrases that hold for it.

    The words a request for this track would use (describe_request); sft.py --id-init descriptions starts each ID
    row at the mean embedding of the words of the tracks that carry it (model.id_rows_from_descriptions).
    """
    return " ".join(track_phrases(cat, row))


def request_examples(cat, row_codes, masks, n, templates, rng):
    """n attribute requests, each anchored on a random catalogue track that satisfies it.

    Returns [(attrs, prompt, anchor_row)]: genre plus up to two other attributes the anchor has.
    """
    rows = np.array(sorted(row_codes))
    out = []
    for _ in range(n):
        attrs = []
        while not attrs:  # a request without attributes ("Suggest a music  song") would make every track relevant
            r = int(rng.choice(rows))
            own = [k for k in ATTRIBUTES if masks[k][r]]
            attrs = [("genre", cat.genres[r][0])] if rng.random() < 0.85 else []
            for j in rng.permutation(len(own))[:int(rng.integers(0 if attrs else 1, 3))]:
                attrs.append(own[j])
            if rng.random() < 0.1:
                attrs.append(("bpm", int(round(cat.feature("tempo")[r] / BPM_STEP) * BPM_STEP)))
        order = {k: i for i, k in enumerate(("genre",) + tuple(dict.fromkeys(a for a, _ in ATTRIBUTES)) + ("bpm",))}
        # dict.fromkeys, not set: a set of strings iterates in an order that changes with PYTHONHASHSEED, and
        # the stable sort would pass that order on to two attributes of one kind (two activities)
        attrs = sorted(dict.fromkeys(attrs), key=lambda a: order[a[0]])
        prompt = templates[int(rng.integers(len(templates)))].format(desc=describe_request(attrs))
        out.append((attrs, prompt[0].upper() + prompt[1:], r))
    return out


def relevant_rows(cat, masks, attrs, rows_with_id):
    m = np.ones(len(cat), dtype=bool)
    for a in attrs:
        m &= bpm_mask(cat, a[1]) if a[0] == "bpm" else masks[a]
    return [int(i) for i in np.flatnonzero(m) if i in rows_with_id]
