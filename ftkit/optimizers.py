"""Optimizers that transformers' `optim` names do not cover: LoRA+ (peft's) and Muon (torch's, with AdamW).

GaLore and APOLLO need nothing here: they are transformers' optimizers of those names (config.py maps
LLaMA-Factory's keys onto `optim`, `optim_target_modules` and `optim_args`).
"""
from __future__ import annotations

import torch

EMBEDDING_NAMES = ("embed", "wte", "wpe", "lm_head", "embed_out")  # matrices that are lookups, not layers: AdamW


def create_optimizer(trainer, cfg) -> torch.optim.Optimizer | None:
    """The optimizer the config asks for, or None for the Trainer's own (from `optim`)."""
    if not (cfg.loraplus_lr_ratio or cfg.use_muon):
        return None
    args, model = trainer.args, trainer.model
    optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(args, model)
    if cfg.loraplus_lr_ratio:
        from peft.optimizers import create_loraplus_optimizer

        kwargs = {k: v for k, v in kwargs.items() if k != "lr"}
        return create_loraplus_optimizer(model, optimizer_cls, lr=args.learning_rate,
                                         loraplus_lr_ratio=cfg.loraplus_lr_ratio,
                                         loraplus_lr_embedding=cfg.loraplus_lr_embedding,
                                         loraplus_weight_decay=args.weight_decay, **kwargs)
    decay = set(trainer.get_decay_parameter_names(model))
    return MuonWithAdamW(model.named_parameters(), decay, lr=args.learning_rate, weight_decay=args.weight_decay,
                         betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)


def muon_parameter(name: str, p: torch.Tensor) -> bool:
    """Muon orthogonalizes the updates of hidden weight matrices; embeddings, the head, norms and biases take
    AdamW (as Muon's authors and LLaMA-Factory split them)."""
    return p.ndim == 2 and not any(e in name for e in EMBEDDING_NAMES)


class MuonWithAdamW(torch.optim.Optimizer):
    """torch.optim.Muon for the hidden weight matrices and torch.optim.AdamW for the other trainable parameters, as
    one optimizer: one set of param groups for the learning-rate schedule, one state dict for checkpoints. Muon's
    updates are scaled to AdamW's RMS (adjust_lr_fn="match_rms_adamw", Moonshot's), so AdamW's learning rate and
    weight decay serve both."""

    def __init__(self, named_parameters, decay: set[str], lr: float, weight_decay: float, betas=(0.9, 0.999),
                 eps: float = 1e-8):
        muon, decayed, plain = [], [], []
        for name, p in named_parameters:
            if p.requires_grad:
                (muon if muon_parameter(name, p) else decayed if name in decay else plain).append(p)
        self._muon = torch.optim.Muon(muon, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw") \
            if muon else None
        adam_groups = [g for g in ({"params": decayed, "weight_decay": weight_decay},
                                   {"params": plain, "weight_decay": 0.0}) if g["params"]]
        self._adamw = torch.optim.AdamW(adam_groups, lr=lr, betas=betas, eps=eps) if adam_groups else None
        groups = []
        for inner, is_muon in ((self._muon, True), (self._adamw, False)):
            for group in inner.param_groups if inner is not None else []:
                groups.append({**group, "muon": is_muon})
        super().__init__(groups, {})  # the same group dicts: the schedule's learning rates reach both
        self._share()

    def _share(self) -> None:
        """The inner optimizers work on this one's param groups and state (after a load_state_dict too)."""
        for inner, muon in ((self._muon, True), (self._adamw, False)):
            if inner is not None:
                inner.param_groups = [g for g in self.param_groups if g["muon"] is muon]
                inner.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for inner in (self._muon, self._adamw):
            if inner is not None:
                inner.step()
        return loss

    def load_state_dict(self, state_dict) -> None:
        super().load_state_dict(state_dict)
        self._share()
