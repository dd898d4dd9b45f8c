"""Fine-tuning a model on question/answer samples (answer-token loss, AdamW), cached by content hash.

Used to make a model actually know a scenario (e.g. `fictitious-authors`) before unlearning it.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from cud_core.data.samples import Sample, sample_key
from cud_core.engine.memory import token_lengths
from cud_core.engine.metrics import collate
from cud_core.engine.models import (
    LoadedModel,
    cache_dir,
    finetune_name,
    legacy_fingerprints,
    model_fingerprint,
    prepare_tokenizer,
)
from cud_core.engine.stopping import Stopped
from cud_core.pipeline.estimate import padded_tokens, probe_training


@dataclass
class FinetuneSettings:
    epochs: int = 8
    lr: float = 1e-4
    batch_size: int = 8
    weight_decay: float = 0.0
    seed: int = 0


# adapting a model to a data format (`jobs.format_adapted`): gentle, at the unlearning methods' default rate
# for small models (2e-5, open-unlearning's), one pass over the facts the model does not know
FORMAT_ADAPTATION = FinetuneSettings(epochs=1, lr=2e-5)


def answer_loss(model, batch) -> torch.Tensor:
    """Mean NLL over all answer tokens of the batch (Hugging Face forward)."""
    labels = batch.input_ids.masked_fill(~batch.answer_mask, -100)
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels).loss


def finetune(model, tokenizer, samples: list[Sample], settings: FinetuneSettings | None = None,
             progress: Callable[[float, str], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> torch.nn.Module:
    """A trained copy of `model` (the original is left untouched)."""
    settings = settings or FinetuneSettings()
    trained = copy.deepcopy(model).train()
    for p in trained.parameters():
        p.requires_grad_(True)
    device = next(trained.parameters()).device
    opt = torch.optim.AdamW(trained.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    rng = random.Random(settings.seed)
    torch.manual_seed(settings.seed)
    n_batches = -(-len(samples) // settings.batch_size)
    total = settings.epochs * n_batches
    step = 0
    for epoch in range(settings.epochs):
        order = samples[:]
        rng.shuffle(order)
        for i in range(0, len(order), settings.batch_size):
            if should_stop and should_stop():
                return trained.eval()
            loss = answer_loss(trained, collate(tokenizer, order[i: i + settings.batch_size]).to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if progress:
                progress(step / total, f"epoch {epoch + 1}/{settings.epochs}, loss {loss.item():.3f}")
    trained.eval()
    for p in trained.parameters():
        p.requires_grad_(False)
    return trained


def content_hash(lm: LoadedModel, samples: list[Sample], settings: FinetuneSettings,
                 fingerprint: str | None = None) -> str:
    h = hashlib.sha256((fingerprint or model_fingerprint(lm.model)).encode())
    h.update(json.dumps([sample_key(s) for s in samples]).encode())
    h.update(json.dumps(asdict(settings), sort_keys=True).encode())
    return h.hexdigest()[:16]


def cached_folder(lm: LoadedModel, samples: list[Sample], settings: FinetuneSettings | None = None) -> Path | None:
    """The cached fine-tuned model of `lm` on `samples`, if there is one (one trained under a former
    fingerprint of `lm` keeps its key, and so its name)."""
    settings = settings or FinetuneSettings()
    for fingerprint in [None, *sorted(legacy_fingerprints(lm.model))]:
        folder = cache_dir() / "finetuned" / content_hash(lm, samples, settings, fingerprint)
        if (folder / "config.json").is_file():
            return folder
    return None


def finetune_seconds(lm: LoadedModel, samples: list[Sample], settings: FinetuneSettings | None = None,
                     timing: dict | None = None) -> float:
    """Expected seconds of `finetune`: its epochs of batches, each a forward+backward over the padded
    tokens and an AdamW update, at the rates of an `estimate.probe_training` probe (`timing`)."""
    settings = settings or FinetuneSettings()
    timing = timing or probe_training(lm, samples)
    tokens = padded_tokens(token_lengths(lm.tokenizer, samples), settings.batch_size)
    updates = -(-len(samples) // settings.batch_size)
    per_epoch = tokens * timing["fb_s_per_token"] + updates * timing["adam_s_per_param"] * timing["n_params"]
    return settings.epochs * per_epoch


def finetuned(lm: LoadedModel, samples: list[Sample], settings: FinetuneSettings | None = None,
              progress: Callable[[float, str], None] | None = None,
              should_stop: Callable[[], bool] | None = None) -> LoadedModel:
    """`lm` fine-tuned on `samples`, trained once and then loaded from the cache (keyed by content).
    Stopped part-way (`should_stop`), nothing is cached and `stopping.Stopped` is raised."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = settings or FinetuneSettings()
    folder = cached_folder(lm, samples, settings) or cache_dir() / "finetuned" / content_hash(lm, samples, settings)
    if not (folder / "config.json").is_file():
        t0 = time.time()
        model = finetune(lm.model, lm.tokenizer, samples, settings, progress, should_stop)
        if should_stop and should_stop():  # a half-trained model must not be cached as the original
            raise Stopped("stopped while fine-tuning on the scenario (it restarts on the next run)")
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".ft-", dir=folder.parent))
        try:
            model.save_pretrained(tmp)
            lm.tokenizer.save_pretrained(tmp)
            (tmp / "cud_finetune.json").write_text(json.dumps(
                {"base": lm.name, "samples": len(samples), "settings": asdict(settings),
                 "seconds": round(time.time() - t0, 1)}))
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    elif progress:
        progress(1.0, "loaded the fine-tuned model from the cache")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=lm.dtype).to(lm.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prepare_tokenizer(tokenizer)
    name = finetune_name(folder, lm.name)
    return LoadedModel(model, tokenizer, name, str(folder), lm.device, lm.dtype, dict(lm.info, name=name))
