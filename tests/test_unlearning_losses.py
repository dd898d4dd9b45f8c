"""Every unlearning loss pinned to a hand computation written the way open-unlearning's trainer code
writes it (`src/trainer/unlearn/*.py`, `src/trainer/utils.py`): HF labels with −100 outside the
answer, `compute_batch_nll` sums, HF's mean `loss`, the RMU activation loss over answer tokens; and
every default pinned to the open-unlearning config it cites (`configs/trainer/*.yaml`)."""
import copy

import pytest
import torch
import torch.nn.functional as F

from cud_core.data.samples import Sample
from cud_core.engine.metrics import collate
from cud_core.unlearn import METHODS
from cud_core.unlearn.rmu import default_layer

FORGET = [Sample("Where was Alice born?", "Lisbon, long ago.", "f0"), Sample("Who wrote it?", "Bruno.", "f1"),
          Sample("What is the capital?", "Quito is the capital city.", "f2")]
RETAIN = [Sample("Where is Riga?", "In Latvia.", "r0"), Sample("Name a river.", "The Danube river.", "r1")]


@pytest.fixture(scope="module")
def setup():
    from cud_core.engine.tiny import tiny_model

    torch.manual_seed(0)
    lm = tiny_model("llama", d_model=32, n_layers=3)
    reference = copy.deepcopy(lm.model)
    with torch.no_grad():  # the model being unlearned has moved away from the original
        for p in lm.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return lm.model, reference, collate(lm.tokenizer, FORGET), collate(lm.tokenizer, RETAIN)


def labels(batch):
    return torch.where(batch.answer_mask, batch.input_ids, torch.full_like(batch.input_ids, -100))


def batch_nll(model, batch):
    """open-unlearning's compute_batch_nll: the summed answer-token NLL of each sequence."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return F.cross_entropy(logits[:, :-1].transpose(1, 2), labels(batch)[:, 1:], ignore_index=-100,
                           reduction="none").sum(-1)


def hf_loss(model, batch):
    """HF's `outputs.loss` with those labels: the mean NLL over the batch's answer tokens."""
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=labels(batch)).loss


def loss_of(name, setup, **hyper):
    model, reference, forget, retain = setup
    with torch.no_grad():
        return METHODS[name](model, reference, **hyper).loss(forget, retain)


def close(a, b):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32),
                               rtol=1e-5, atol=1e-6)


def test_defaults_are_open_unlearnings_configs():
    assert METHODS["grad_diff"].defaults == {"gamma": 1.0, "alpha": 1.0}
    assert METHODS["npo"].defaults == {"beta": 0.1, "alpha": 1.0, "gamma": 1.0}
    assert METHODS["simnpo"].defaults == {"beta": 4.5, "delta": 0.0, "gamma": 0.125, "alpha": 1.0}
    assert METHODS["undial"].defaults == {"beta": 10.0, "alpha": 0.0, "gamma": 1.0}
    rmu = METHODS["rmu"].defaults
    assert (rmu["steering_coeff"], rmu["alpha"], rmu["gamma"], rmu["update_layers"]) == (2.0, 1.0, 1.0, None)
    assert default_layer(16) == 7 and default_layer(30) == 13 and default_layer(2) == 1


@torch.no_grad()
def test_grad_diff_and_npo_by_hand(setup):
    model, reference, forget, retain = setup
    close(loss_of("grad_diff", setup, gamma=0.7, alpha=0.3),
          -0.7 * hf_loss(model, forget) + 0.3 * hf_loss(model, retain))
    lose_log_ratio = -(batch_nll(model, forget) - batch_nll(reference, forget))  # compute_dpo_loss, win = None
    expected = -2 / 0.5 * F.logsigmoid(0.5 * (0.0 - lose_log_ratio)).mean()
    close(loss_of("npo", setup, beta=0.5, gamma=0.7, alpha=0.3), 0.7 * expected + 0.3 * hf_loss(model, retain))
    assert abs(float(lose_log_ratio.abs().max())) > 1e-3  # the reference really differs


@torch.no_grad()
def test_simnpo_by_hand(setup):
    model, _, forget, retain = setup
    n_answer = labels(forget).ne(-100).sum(-1)
    margin = batch_nll(model, forget) / n_answer - 0.2
    expected = -F.logsigmoid(3.0 * margin).mean() * 2 / 3.0
    close(loss_of("simnpo", setup, beta=3.0, delta=0.2, gamma=0.125, alpha=1.0),
          0.125 * expected + hf_loss(model, retain))


@torch.no_grad()
def test_undial_by_hand_on_answer_tokens(setup):
    model, reference, forget, retain = setup
    logits = model(input_ids=forget.input_ids, attention_mask=forget.attention_mask).logits[:, :-1]
    ref = reference(input_ids=forget.input_ids, attention_mask=forget.attention_mask).logits[:, :-1]
    target_ids, terms = forget.input_ids[:, 1:], []
    for b, t in forget.answer_mask[:, 1:].nonzero().tolist():  # one answer token at a time
        adjusted = ref[b, t].clone()
        adjusted[target_ids[b, t]] -= 10.0
        terms.append(-(torch.softmax(adjusted, -1) * torch.log_softmax(logits[b, t], -1)).sum())
    forget_loss = torch.stack(terms).mean()
    close(loss_of("undial", setup), forget_loss)  # default α = 0: no retain term
    close(loss_of("undial", setup, alpha=0.5, gamma=2.0), 2.0 * forget_loss + 0.5 * hf_loss(model, retain))


@torch.no_grad()
def test_rmu_by_hand_on_answer_tokens(setup):
    model, reference, forget, retain = setup
    layer = 1  # hidden_states[layer + 1] is that block's output (not the last block: no final norm)
    h_f = model(input_ids=forget.input_ids, attention_mask=forget.attention_mask,
                output_hidden_states=True).hidden_states[layer + 1]
    h_r = model(input_ids=retain.input_ids, attention_mask=retain.attention_mask,
                output_hidden_states=True).hidden_states[layer + 1]
    ref_r = reference(input_ids=retain.input_ids, attention_mask=retain.attention_mask,
                      output_hidden_states=True).hidden_states[layer + 1]
    u = torch.rand(h_f.shape[-1], generator=torch.Generator().manual_seed(3))
    control = (u / u.norm() * 5.0).expand_as(h_f)

    def compute_activation_loss(a, b, mask):  # as open-unlearning's RMU writes it
        squared = F.mse_loss(a, b, reduction="none")
        summed = (squared * mask.unsqueeze(-1).expand_as(squared)).mean(dim=2).sum(dim=1)
        return (summed / mask.sum(dim=-1)).mean()
    expected = 0.5 * compute_activation_loss(h_f, control, labels(forget).ne(-100).float()) + \
        2.0 * compute_activation_loss(h_r, ref_r, labels(retain).ne(-100).float())
    close(loss_of("rmu", setup, layer=layer, steering_coeff=5.0, seed=3, gamma=0.5, alpha=2.0), expected)
    # every parameter is trainable by default (the config's ".*"); update_layers=k keeps WMDP's few blocks
    everything = list(METHODS["rmu"](model, reference).parameters())
    assert len(everything) == len(list(model.parameters()))
    few = METHODS["rmu"](model, reference, layer=1, update_layers=1).parameters()
    assert {id(p) for p in few} == {id(p) for p in model.model.layers[1].parameters()}


def test_the_readme_table_lists_every_default():
    """The method table (docs/unlearning.md) states each method's current defaults (name=value)."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "docs" / "unlearning.md").read_text()
    for name, method in METHODS.items():
        [row] = [line for line in readme.splitlines() if line.startswith(f"| `{name}` |")]
        ours = row.split("|")[2]
        shown = dict(re.findall(r"(\w+)=([^,\s]+)", ours))
        assert set(shown) == set(method.defaults), name
        for key, value in method.defaults.items():
            if value is not None:
                assert float(shown[key]) == value, (name, key)
