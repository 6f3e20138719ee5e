"""The SFT and DPO adapters' weights mixed or extrapolated: one adapter folder per lambda, for val_next.py to rank.

    python benchmarks/expo.py --sft runs/demo/sft/adapter --dpo runs/demo/dpo/adapter --lam 2 --out runs/lv/expo2_s0
    python benchmarks/val_next.py --run runs/demo --adapter ExPO2=runs/lv/expo2_s0 ...

DPO starts from the SFT weights and moves them by Delta = theta_dpo - theta_sft. Every point of the line through
the two is a model:

    theta(lambda) = theta_sft + lambda (theta_dpo - theta_sft)                                           (1)

lambda = 0 is SFT, 1 is DPO; between them a weight-space mix (WiSE-FT, Wortsman et al. 2022: fine-tuned and
starting weights averaged keep more of what the start knew); above 1 an extrapolation (ExPO: Zheng et al.,
"Model extrapolation expedites alignment", arXiv 2404.16792, ACL 2025: theta_dpo + alpha (theta_dpo - theta_sft),
alpha = lambda - 1; alignment moves the weights little, so to first order the same direction keeps improving the
alignment objective past a DPO model trained briefly). No training: what the line gives is read off the validation
windows (val_next.py).

A LoRA layer's weight is W0 + s B A (s = lora_alpha / r), so along (1) it is

    W(lambda) = W0 + s [(1 - lambda) B_sft A_sft + lambda B_dpo A_dpo]

which is not s B' A' for any B', A' of rank r, but is exactly one of rank 2r (combine_lora): A' stacks the two A's,
B' the two B's scaled by (1 - lambda) and lambda, and lora_alpha doubles so that s stays (r doubles). Nothing is
approximated: at lambda = 1 the model computes DPO's weights, at 0 SFT's (tests/test_expo.py). The Semantic-ID
rows (and any other trained tensor of id_tokens.safetensors) are plain weights: (1) as written.
"""
import argparse
import math
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

import harness  # first: it puts the repository root on sys.path for the imports below
import lora
import model as M
from common import UserError, atomic_dir, need_file, read_json, run_main, save_config, write_json

LAM: float = 2.0   # 1 is DPO itself, 2 twice its step (ExPO's alpha 1); measured at 0.5 to 3 (EXPERIMENTS.md)


def mix(sft, dpo, lam):
    """(1) for one tensor: sft + lam (dpo - sft), any shape; lam = 0 gives sft, 1 gives dpo (fp32)."""
    return sft.float() + lam * (dpo.float() - sft.float())


def combine_lora(a_sft, b_sft, a_dpo, b_dpo, lam):
    """One LoRA layer of theta(lambda) at rank 2r: (A' (2r, in), B' (out, 2r)) with B' A' = (1-lam) B_sft A_sft +
    lam B_dpo A_dpo exactly (the caller doubles lora_alpha so that the scale s = alpha / r stays).

    a_*: (r, in), b_*: (out, r). Worked example, r = 1: A_sft = [[1, 0]], B_sft = [[1]], A_dpo = [[0, 1]], B_dpo =
    [[2]], lam = 0.5: A' = [[1, 0], [0, 1]], B' = [[0.5, 1]], B' A' = [[0.5, 1]] = 0.5 [[1, 0]] + 0.5 [[0, 2]]."""
    a = torch.cat([a_sft.float(), a_dpo.float()], dim=0)
    b = torch.cat([(1.0 - lam) * b_sft.float(), lam * b_dpo.float()], dim=1)
    return a, b


def doubled_alpha(config):
    """The lora_alpha that keeps a layer's scale when r doubles: alpha / r (or alpha / sqrt(r) with rsLoRA)."""
    alpha = float(config["lora_alpha"])
    return alpha * (math.sqrt(2.0) if config.get("use_rslora", False) else 2.0)


def combine_adapter_states(sft_state, dpo_state, lam):
    """adapter_model.safetensors of theta(lambda) from the two adapters' (PEFT keys, ...lora_A/B.weight)."""
    if set(sft_state) != set(dpo_state):
        raise UserError("the two adapters wrap different modules (another LoRA target list?)")
    out = {}
    for key in sft_state:
        if not key.endswith(".lora_A.weight"):
            continue
        kb = key[:-len("lora_A.weight")] + "lora_B.weight"
        out[key], out[kb] = combine_lora(sft_state[key], sft_state[kb], dpo_state[key], dpo_state[kb], lam)
    return out


def combine_id_states(sft_ids, dpo_ids, lam):
    """id_tokens.safetensors of theta(lambda): (1) on every floating tensor; the rest (codes) must be equal.
    A head bias only DPO trained (dpo.py --id-bias-lr) is 0 in the SFT file, which leaves it out."""
    sft_ids = dict(sft_ids)
    if "lm_head.id_bias" in dpo_ids and "lm_head.id_bias" not in sft_ids:
        sft_ids["lm_head.id_bias"] = torch.zeros_like(dpo_ids["lm_head.id_bias"])
    if set(sft_ids) != set(dpo_ids):
        raise UserError(f"the two adapters' ID tensors differ: {sorted(set(sft_ids) ^ set(dpo_ids))}")
    out = {}
    for k, t in sft_ids.items():
        if t.is_floating_point():
            out[k] = mix(t, dpo_ids[k], lam)
        elif torch.equal(t, dpo_ids[k]):
            out[k] = t.clone()
        else:
            raise UserError(f"the two adapters' {k} differ (adapters of other runs?)")
    return out


def write_combined(sft, dpo, lam, out):
    """Write theta(lambda)'s adapter folder: the LoRA at rank 2r, the mixed ID rows, DPO's id_vocab.json."""
    for folder in (sft, dpo):
        need_file(os.path.join(folder, lora.ADAPTER_WEIGHTS), "adapter weights")
        need_file(os.path.join(folder, M.ID_TOKENS_FILE), "Semantic-ID rows")
    cs, cd = lora.read_adapter_config(sft), lora.read_adapter_config(dpo)
    for k in ("r", "lora_alpha", "use_rslora", "target_modules"):
        if cs.get(k) != cd.get(k):
            raise UserError(f"{sft} and {dpo}: {k} differs ({cs.get(k)!r} against {cd.get(k)!r})")
    vs, vd = read_json(os.path.join(sft, M.ID_VOCAB_FILE)), read_json(os.path.join(dpo, M.ID_VOCAB_FILE))
    if vs["id_table_sha256"] != vd["id_table_sha256"] or vs["base_fingerprint"] != vd["base_fingerprint"]:
        raise UserError(f"{sft} and {dpo} were trained on another Semantic-ID table or base model")
    weights = combine_adapter_states(load_file(os.path.join(sft, lora.ADAPTER_WEIGHTS)),
                                     load_file(os.path.join(dpo, lora.ADAPTER_WEIGHTS)), lam)
    ids = combine_id_states(load_file(os.path.join(sft, M.ID_TOKENS_FILE)),
                            load_file(os.path.join(dpo, M.ID_TOKENS_FILE)), lam)
    with atomic_dir(out) as tmp:   # a killed run leaves no half adapter for val_next.py to read
        save_file(weights, os.path.join(tmp, lora.ADAPTER_WEIGHTS), metadata={"format": "pt"})
        save_file(ids, os.path.join(tmp, M.ID_TOKENS_FILE), metadata={"format": "pt"})
        write_json(os.path.join(tmp, lora.ADAPTER_CONFIG),
                   {**cd, "r": 2 * int(cd["r"]), "lora_alpha": doubled_alpha(cd)})
        shutil.copy(os.path.join(dpo, M.ID_VOCAB_FILE), os.path.join(tmp, M.ID_VOCAB_FILE))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sft", required=True, help="the SFT adapter folder DPO started from (lambda = 0)")
    p.add_argument("--dpo", required=True, help="the DPO adapter folder (lambda = 1)")
    p.add_argument("--lam", type=float, default=LAM,
                   help=f"lambda in theta_sft + lambda (theta_dpo - theta_sft) (default {LAM:g}): 0 is SFT, 1 DPO, "
                        "below 1 a mix toward SFT (WiSE-FT: more attribute precision), above 1 past DPO (ExPO: more "
                        "preference accuracy)")
    p.add_argument("--out", required=True, help="the adapter folder to write (val_next.py --adapter NAME=OUT)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    write_combined(args.sft, args.dpo, args.lam, args.out)
    save_config(args.out, args, name="expo_config.json")
    print(f"{args.out}: theta_sft + {args.lam:g} (theta_dpo - theta_sft), LoRA at rank 2r")


if __name__ == "__main__":
    run_main(main)
