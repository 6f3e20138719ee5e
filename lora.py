"""LoRA by hand (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

    h = W0 x + (alpha / r) * B A dropout(x)                      (paper eq. 3)

A: (r, in_features), kaiming-uniform; B: (out_features, r), zeros, so the adapter
is a no-op at init and training starts exactly from the base model. rsLoRA
(Kalajdzievski 2023) scales by alpha / sqrt(r) instead, which keeps the update
size stable as r grows.

Adapters are saved in PEFT's file format (adapter_model.safetensors +
adapter_config.json, keys `base_model.model.<module>.lora_A.weight`), so
`peft.PeftModel.from_pretrained(base, folder)` loads what we train.
"""
import contextlib
import json
import math
import os
import re

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from common import UserError, atomic_path, write_json

# -----------------------------------------------------------------------------
# defaults (sft.py and dpo.py expose them as options)
LORA_R: int = 16              # rank of the update B @ A
LORA_ALPHA: float = 32.0      # scaling numerator: update is (alpha / r) * B @ A
# dropout on the LoRA branch input only (the frozen path sees clean x). 0, PEFT's default too: a run sees each
# example about once (the demo: 3,840 of 19,745), so there is nothing to overfit yet, and on a CPU drawing the masks
# costs about a quarter of an SFT step (EXPERIMENTS.md, "LoRA dropout off")
LORA_DROPOUT: float = 0.0
USE_RSLORA: bool = False      # alpha / sqrt(r) scaling (rsLoRA)
# all seven Llama projections; PEFT's own default would be q_proj, v_proj only
LORA_TARGETS: tuple = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # PEFT wraps the causal LM twice: PeftModel -> LoraModel -> model
# -----------------------------------------------------------------------------


def lora_scaling(alpha, r, use_rslora=False):
    """alpha / r (LoRA eq. 3), or alpha / sqrt(r) for rsLoRA."""
    return alpha / math.sqrt(r) if use_rslora else alpha / r


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus a trainable low-rank branch.

    It keeps the base `weight` / `bias` under their original names, so the base
    model's state dict keys do not change when LoRA is injected.
    """

    def __init__(self, base: nn.Linear, r, alpha, dropout=0.0, use_rslora=False):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight            # (out, in), frozen
        self.bias = base.bias                # (out,) or None, frozen
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.r, self.alpha, self.use_rslora = r, alpha, use_rslora
        self.scaling = lora_scaling(alpha, r, use_rslora)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # adapters stay fp32 even on a bf16 base: tiny tensors, and their updates are small
        dev = base.weight.device
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=dev, dtype=torch.float32)   # (r, in)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=dev, dtype=torch.float32)  # (out, r)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear's own init
        nn.init.zeros_(self.lora_B.weight)  # B = 0: the adapted model starts equal to the base
        self.merged = False
        self.disabled = False

    def delta_weight(self):
        """scaling * B @ A in fp32: (out, in)."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    def forward(self, x):  # x: (..., in)
        y = F.linear(x, self.weight, self.bias)  # (..., out)
        if self.merged or self.disabled:
            return y  # a merged layer already holds the update in W
        a = self.lora_A(self.lora_dropout(x).to(self.lora_A.weight.dtype))
        return y + (self.lora_B(a) * self.scaling).to(y.dtype)

    @torch.no_grad()
    def merge(self):
        """W += scaling * B @ A; idempotent (a flag), computed in fp32 then cast."""
        if not self.merged:
            self.weight.copy_((self.weight.float() + self.delta_weight()).to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self):
        if self.merged:
            self.weight.copy_((self.weight.float() - self.delta_weight()).to(self.weight.dtype))
            self.merged = False

    def extra_repr(self):
        return (f"in={self.in_features}, out={self.out_features}, r={self.r}, "
                f"scaling={self.scaling:g}, merged={self.merged}")


def lora_layers(model):
    """(name, LoRALinear) pairs in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def inject_lora(model, targets=LORA_TARGETS, r=LORA_R, alpha=LORA_ALPHA, dropout=LORA_DROPOUT,
                use_rslora=USE_RSLORA):
    """Replace every nn.Linear whose name ends with one of `targets` by a LoRALinear.

    Freezes every other parameter of the model first. A target may be a plain module
    name (`q_proj`, matched on the last name component) or a regex over the full name.
    Returns the full names of the wrapped modules.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or name.endswith("lm_head"):
            continue
        last = name.rsplit(".", 1)[-1]
        if any(last == t or (not t.isidentifier() and re.fullmatch(t, name)) for t in targets):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            new = LoRALinear(module, r, alpha, dropout, use_rslora)
            new.train(module.training)  # a fresh module defaults to train mode: keep eval models in eval
            setattr(parent, last, new)
            wrapped.append(name)
    if not wrapped:
        raise UserError(f"no Linear module matches the LoRA targets {list(targets)}")
    return wrapped


def merge_lora(model):
    for _, m in lora_layers(model):
        m.merge()


def unmerge_lora(model):
    for _, m in lora_layers(model):
        m.unmerge()


@contextlib.contextmanager
def lora_disabled(model):
    """Run the base model alone (the adapter's branch switched off), e.g. for zero-shot scores."""
    layers = [m for _, m in lora_layers(model)]
    if any(m.merged for m in layers):
        raise RuntimeError("unmerge the adapter before disabling it")
    for m in layers:
        m.disabled = True
    try:
        yield model
    finally:
        for m in layers:
            m.disabled = False


def count_parameters(model):
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def lora_state_dict(model):
    """The adapter tensors under PEFT's key names (cloned: safetensors refuses shared storage)."""
    out = {}
    for name, m in lora_layers(model):
        out[f"{PEFT_PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().float().cpu().clone()
        out[f"{PEFT_PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().float().cpu().clone()
    return out


def target_names(model, wrapped):
    """The adapter config's target_modules: the short names (`q_proj`) when they select exactly the wrapped
    modules, else the wrapped modules' full names (a regex target such as `model.layers.0..*q_proj` wrapped
    some of them only; PEFT matches a full name as a suffix, inject_lora as a regex matching only itself)."""
    short = sorted({n.rsplit(".", 1)[-1] for n in wrapped})
    linear = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, LoRALinear))
              and not n.endswith("lm_head") and ".lora_" not in n]
    selected = [n for n in linear if n.rsplit(".", 1)[-1] in short]
    return short if sorted(selected) == sorted(wrapped) else sorted(wrapped)


def save_adapter(model, folder, base_model_name_or_path=""):
    """Write adapter_model.safetensors + adapter_config.json in PEFT's format."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA layers to save")
    m0 = layers[0][1]
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base_model_name_or_path),
        "r": m0.r,
        "lora_alpha": m0.alpha,
        "lora_dropout": m0.lora_dropout.p if isinstance(m0.lora_dropout, nn.Dropout) else 0.0,
        "use_rslora": m0.use_rslora,
        "target_modules": target_names(model, [n for n, _ in layers]),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "modules_to_save": None,
    }
    os.makedirs(folder, exist_ok=True)
    with atomic_path(os.path.join(folder, ADAPTER_WEIGHTS)) as tmp:
        save_file(lora_state_dict(model), tmp, metadata={"format": "pt"})
    write_json(os.path.join(folder, ADAPTER_CONFIG), config)
    return config


def read_adapter_config(folder):
    path = os.path.join(folder, ADAPTER_CONFIG)
    if not os.path.exists(path):
        raise UserError(f"{folder}: not an adapter folder ({ADAPTER_CONFIG} missing)")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("peft_type") != "LORA":
        raise UserError(f"{path}: peft_type is {config.get('peft_type')!r}, expected 'LORA'")
    return config


def load_adapter(model, folder, dropout=None):
    """Inject LoRA as `folder`'s config says (unless already injected) and load its weights."""
    config = read_adapter_config(folder)
    if not lora_layers(model):
        inject_lora(model, targets=tuple(config["target_modules"]), r=config["r"],
                    alpha=config["lora_alpha"],
                    dropout=config.get("lora_dropout", 0.0) if dropout is None else dropout,
                    use_rslora=config.get("use_rslora", False))
    state = load_file(os.path.join(folder, ADAPTER_WEIGHTS))
    layers = dict(lora_layers(model))
    expected = {f"{PEFT_PREFIX}{n}.{ab}.weight" for n in layers for ab in ("lora_A", "lora_B")}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise UserError(f"{folder}: adapter does not fit this model "
                        f"(missing {missing[:2]}..., unexpected {extra[:2]}...)")
    with torch.no_grad():
        for name, m in layers.items():
            for ab in ("lora_A", "lora_B"):
                t = state[f"{PEFT_PREFIX}{name}.{ab}.weight"]
                w = getattr(m, ab).weight
                if t.shape != w.shape:
                    raise UserError(f"{folder}: {name}.{ab} has shape {tuple(t.shape)}, "
                                    f"the model needs {tuple(w.shape)} (another base model?)")
                w.copy_(t)
    return config
