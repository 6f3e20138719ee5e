"""The track-vector token (sft.py --track-vectors, model.TrackFeatures): where prompts get it, what it reads, and
that an adapter carries it."""
import pytest
import torch

import formats
import model as M
import rvq
import sft
from common import UserError

CODES = torch.tensor([[0, 1, 2], [3, 0, 1], [1, 1, 1]])            # three tracks, 3 levels x 4 codes
VECTORS = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0]])       # (N, D = 2), the rows of CODES


def policy(tiny_smol):
    model, tok, vocab = M.load_policy(tiny_smol, levels=3, codebook_size=4)
    M.add_track_features(model, vocab, VECTORS, CODES)
    return model, M.PromptFormat(tok, vocab), vocab


def test_prompts_get_the_token_after_each_full_id_and_answers_never(tiny_smol):
    _, fmt, vocab = policy(tiny_smol)
    tok = vocab.track_token
    assert tok == vocab.offset + vocab.size                             # one past the ID rows: no head row
    body = fmt.prompt("like <a_3><b_0><c_1> then <a_0><b_1> or <b_1><a_0><b_1><c_2>")[len(fmt.prefix):]
    ids = [vocab.token_id(0, 3), vocab.token_id(1, 0), vocab.token_id(2, 1)]
    at = body.index(tok)
    assert body[at - 3:at] == ids                                       # right after the first full ID
    # the 2-code ID gets none; in "<b_1><a_0><b_1><c_2>" the full ID after the stray code gets one
    assert body.count(tok) == 2
    second = body.index(tok, at + 1)
    assert body[second - 3:second] == [vocab.token_id(0, 0), vocab.token_id(1, 1), vocab.token_id(2, 2)]
    assert tok not in fmt.answer((0, 1, 2))
    assert "<a_3><b_0><c_1><track>" in fmt.decode(body)
    plain = M.PromptFormat(fmt.tokenizer, M.IDVocab(3, 4, vocab.offset))   # a model without the token
    assert plain.vocab.track_token is None and tok not in plain.prompt("like <a_3><b_0><c_1>")


def test_the_token_reads_its_tracks_vector(tiny_smol):
    model, fmt, vocab = policy(tiny_smol)
    emb = model.get_input_embeddings()
    mean = emb.weight.detach().float().mean(0)
    W = torch.arange(2 * mean.numel(), dtype=torch.float32).reshape(-1, 2) / 100      # (H, 2)
    known, unknown = fmt.prompt("like <a_3><b_0><c_1>"), fmt.prompt("like <a_3><b_3><c_3>")
    k_at, u_at = known.index(vocab.track_token), unknown.index(vocab.track_token)
    # W = 0 at the start: the token is the mean embedding row, whatever the track
    assert torch.allclose(emb(torch.tensor([known]))[0, k_at], mean)
    with torch.no_grad():
        emb.track_features.proj.weight.copy_(W)
    assert torch.allclose(emb(torch.tensor([known]))[0, k_at], W @ VECTORS[1] + mean, atol=1e-6)   # track 1
    assert torch.allclose(emb(torch.tensor([unknown]))[0, u_at], mean)  # no track has <a_3><b_3><c_3>
    # left padding in a batch moves the positions, not what each row reads; every other token is the plain lookup
    pad = vocab.offset - 1
    n = max(len(known) + 2, len(unknown))
    batch = torch.tensor([[pad] * (n - len(known)) + known, unknown + [pad] * (n - len(unknown))])
    out = emb(batch)
    assert torch.allclose(out[0, k_at + n - len(known)], W @ VECTORS[1] + mean, atol=1e-6)
    assert torch.allclose(out[1, u_at], mean)
    other = batch != vocab.track_token
    ids = batch.clamp(max=vocab.offset + vocab.size - 1)
    plain = torch.where((ids >= emb.num_base)[..., None], emb.new_rows[(ids - emb.num_base).clamp(min=0)],
                        emb.weight[ids.clamp(max=emb.num_base - 1)])
    assert torch.equal(out[other], plain[other])


def test_a_loss_trains_the_projection_and_the_adapter_carries_it(tiny_smol, tmp_path):
    args = sft.parse_args(["--data", "x", "--out", "y", "--model", tiny_smol, "--track-vectors"])
    model, tok, vocab = sft.build_policy(args, {"levels": 3, "codebook_size": 4,
                                                "semantic_ids": None, "rvq": None}, "cpu", track=(VECTORS, CODES))
    fmt = M.PromptFormat(tok, vocab)
    proj = model.get_input_embeddings().track_features.proj
    assert proj.weight.requires_grad and proj.bias.requires_grad
    assert {id(p) for p in M.track_feature_parameters(model)} == {id(proj.weight), id(proj.bias)}
    prompt = fmt.prompt("more like <a_1><b_1><c_1>")
    ids = torch.tensor([prompt + fmt.answer((0, 1, 2))])
    model(ids).logits[0, len(prompt) - 1, vocab.token_id(0, 0)].backward()
    assert proj.weight.grad.abs().sum() > 0                              # through track 2's vector
    with torch.no_grad():
        proj.weight.normal_(generator=torch.Generator().manual_seed(0))
    M.save_policy(model, vocab, str(tmp_path / "a"), tiny_smol, "sha")
    loaded, ltok, lvocab = M.load_policy(tiny_smol, adapter=str(tmp_path / "a"))
    assert lvocab.track_token == vocab.track_token
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)        # the same function after the round trip


def test_missing_or_mismatched_vectors_are_one_line_errors(tmp_path):
    formats.write_semantic_ids(str(tmp_path / "semantic_ids.tsv"), ["t0", "t1", "t2"], CODES.numpy())
    meta = {"semantic_ids": str(tmp_path / "semantic_ids.tsv"), "rvq": str(tmp_path)}
    with pytest.raises(UserError, match="track_vectors.safetensors: track-vector file .* train it again"):
        sft.track_vectors_of(meta)
    rvq.save_track_vectors(str(tmp_path / rvq.VECTORS_FILE), VECTORS[:2])         # another table's: 2 rows
    with pytest.raises(UserError, match=r"\(2, 2\) vectors, expected one row per track of semantic_ids.tsv \(3\)"):
        sft.track_vectors_of(meta)
    rvq.save_track_vectors(str(tmp_path / rvq.VECTORS_FILE), VECTORS)
    vectors, codes = sft.track_vectors_of(meta)
    assert torch.equal(vectors, VECTORS) and (codes == CODES.numpy()).all()
