"""The circuit engine: graph layout, hooked forward, per-head gradients, attribution vs patching."""
import pytest
import torch
from scipy.stats import pearsonr, spearmanr

from cud_core.data.samples import Sample
from cud_core.engine import hooked
from cud_core.engine.adapters import UnsupportedModelError, adapter_for
from cud_core.engine.attribution import _baseline_outputs, attribute, metric_per_sample
from cud_core.engine.graph import Graph, layout_of
from cud_core.engine.metrics import collate
from cud_core.engine.tiny import FAMILIES, tiny_model

SAMPLES = [Sample("What is the capital of France?", "The capital of France is Paris.", "a"),
           Sample("Who wrote Hamlet?", "Shakespeare.", "b"),
           Sample("Where was Alice born?", "Alice was born in Lisbon in 1961.", "c")]


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request):
    return tiny_model(request.param, n_layers=3)


def test_edge_counts_of_reference_configs():
    from transformers import GPT2Config, LlamaConfig

    assert Graph(*layout_of(GPT2Config())).n_edges == 32491
    llama_1b = LlamaConfig(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8)
    assert Graph(*layout_of(llama_1b)).n_edges == 386713
    smollm2 = LlamaConfig(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3)
    assert Graph(*layout_of(smollm2)).n_edges == 123211


def test_graph_layout_and_names():
    g = Graph(n_layers=2, n_heads=2)
    assert g.forward_names == ["input", "a0.h0", "a0.h1", "m0", "a1.h0", "a1.h1", "m1"]
    assert g.backward_names[:7] == ["a0.h0<q>", "a0.h1<q>", "a0.h0<k>", "a0.h1<k>", "a0.h0<v>", "a0.h1<v>", "m0"]
    assert g.backward_names[-1] == "logits" and g.real_edge_mask.shape == (g.n_forward, g.n_backward)
    name = lambda f, b: g.real_edge_mask[g.forward_names.index(f), g.backward_names.index(b)]  # noqa: E731
    assert name("input", "a0.h1<q>") and name("a0.h0", "m0") and name("m0", "a1.h0<v>") and name("m1", "logits")
    assert not name("a0.h0", "a0.h1<k>") and not name("m0", "m0") and not name("a1.h0", "a1.h0<q>")
    assert g.edge_name(0, g.backward_names.index("a1.h1<k>")) == "input->a1.h1<k>"
    parallel = Graph(n_layers=2, n_heads=2, parallel=True)  # GPT-NeoX: m{l} reads only earlier layers
    assert not parallel.real_edge_mask[1, parallel.mlp_index(0)] and parallel.real_edge_mask[0, parallel.mlp_index(0)]
    assert parallel.n_edges == g.n_edges - 2 * 2


def test_hooked_forward_reproduces_hf_logits(family_model):
    model = family_model.model
    ad, g = adapter_for(model), Graph.from_model(model)
    ids = torch.randint(0, model.config.vocab_size, (3, 19))
    with torch.no_grad():
        expected = model(ids).logits
        plain = hooked.logits(ad, hooked.run(ad, g, ids))
        buf = torch.zeros(3, g.n_forward, 19, ad.d_model)
        captured = hooked.logits(ad, hooked.run(ad, g, ids, taps=hooked.Taps(capture=buf)))
        # per-head copies path, every edge "patched" to its own clean value: still the same model
        copies = hooked.logits(ad, hooked.run(ad, g, ids, taps=hooked.Taps(
            patch=hooked.Patch(torch.ones(g.n_forward, g.n_backward), buf.clone()))))
    for out in (plain, captured, copies):
        assert (out - expected).abs().max() <= 1e-4
    # node outputs add up to the residual stream the model feeds its final norm (+ output biases)
    resid = hooked.run(ad, g, ids)
    biases = sum(lw.bo for lw in ad.layers if lw.bo is not None) if any(
        lw.bo is not None for lw in ad.layers) else 0
    assert torch.allclose(buf.sum(1) + biases, resid.detach(), atol=1e-4)


def test_per_head_input_gradients_are_exact(family_model):
    """The hook's g_v equals autograd's gradient of M w.r.t. v's own residual copy, obtained
    independently through the per-copy (patched) path: input_v = resid − out_u + baseline_u."""
    model = family_model.model
    ad, g = adapter_for(model), Graph.from_model(model)
    batch = collate(family_model.tokenizer, SAMPLES[:2])
    B, T = batch.input_ids.shape
    grads = {}

    def on_grad(kind, layer, grad):
        grads[(kind, layer)] = grad.detach()
    with torch.enable_grad():
        x0 = ad.embed(batch.input_ids).detach().requires_grad_()
        m = metric_per_sample(ad, hooked.run(ad, g, batch.input_ids, x0, hooked.Taps(on_grad=on_grad)), batch,
                              "logprob")[0]
        m.sum().backward()
    clean = torch.zeros(B, g.n_forward, T, ad.d_model)
    with torch.no_grad():
        hooked.run(ad, g, batch.input_ids, taps=hooked.Taps(capture=clean))
    H = g.n_heads
    for b_name in ("a1.h0<q>", f"a2.h{H - 1}<k>", "a1.h1<v>", "m1", "logits"):
        b = g.backward_names.index(b_name)
        weights = torch.zeros(g.n_forward, g.n_backward)
        weights[0, b] = 1  # route the input node's contribution to v through the baseline tensor
        base = clean.clone().requires_grad_()
        with torch.enable_grad():
            resid = hooked.run(ad, g, batch.input_ids, taps=hooked.Taps(patch=hooked.Patch(weights, base)))
            metric_per_sample(ad, resid, batch, "logprob")[0].sum().backward()
        expected = base.grad[:, 0]  # d M / d baseline_input = gradient of v's input copy
        layer = g.backward_layer(b)
        if b_name == "logits":
            got = grads[("logits", g.n_layers)]
        elif b_name.startswith("m"):
            got = grads[("mlp", layer)]
        else:
            head = int(b_name.split(".h")[1].split("<")[0])
            got = grads[(b_name[-2], layer)][:, :, head]
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), b_name


def exact_patching_effects(lm, sample, graph):
    ad = adapter_for(lm.model)
    batch = collate(lm.tokenizer, [sample])
    base = _baseline_outputs(ad, graph, batch, None)
    effects = []
    with torch.no_grad():
        clean = metric_per_sample(ad, hooked.run(ad, graph, batch.input_ids), batch, "logprob")[0]
        for f, b in graph.edges():
            w = torch.zeros(graph.n_forward, graph.n_backward)
            w[f, b] = 1
            patched = hooked.run(ad, graph, batch.input_ids, taps=hooked.Taps(patch=hooked.Patch(w, base)))
            effects.append(float(clean - metric_per_sample(ad, patched, batch, "logprob")[0]))
    return effects


def test_attribution_agrees_with_exact_single_edge_patching(capsys):
    lm = tiny_model("llama", n_layers=2)
    graph = Graph.from_model(lm.model)
    effects = exact_patching_effects(lm, SAMPLES[0], graph)
    report = {}
    for method in ("eap", "eap-ig-inputs", "eap-ig-activations", "eap-ig-activations-peer"):
        scores = attribute(lm.model, lm.tokenizer, SAMPLES[:1], method=method)[0]
        report[method] = pearsonr([float(scores[f, b]) for f, b in graph.edges()], effects)[0]
    with capsys.disabled():
        print(f"\n  Pearson with exact patching over {graph.n_edges} edges: "
              + ", ".join(f"{k} {v:.3f}" for k, v in report.items()))
    assert report["eap"] >= 0.7
    assert report["eap-ig-inputs"] >= 0.8 and report["eap-ig-activations"] >= 0.8


def test_ig_with_one_step_is_plain_eap(tiny_llama):
    eap = attribute(tiny_llama.model, tiny_llama.tokenizer, SAMPLES, method="eap")
    for method in ("eap-ig-inputs", "eap-ig-activations"):
        ig1 = attribute(tiny_llama.model, tiny_llama.tokenizer, SAMPLES, method=method, steps=1)
        assert torch.allclose(ig1, eap, atol=1e-6)


def test_scores_zero_outside_real_edges_batch_equals_single_and_deterministic(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    graph = Graph.from_model(model)
    batched = attribute(model, tok, SAMPLES, batch_size=3)
    assert batched.shape == (3, graph.n_forward, graph.n_backward)
    assert (batched[:, ~graph.real_edge_mask] == 0).all() and (batched[:, graph.real_edge_mask] != 0).any()
    single = torch.cat([attribute(model, tok, [s], batch_size=1) for s in SAMPLES])
    assert torch.allclose(batched, single, atol=1e-5, rtol=1e-4)
    assert torch.equal(attribute(model, tok, SAMPLES, batch_size=3), batched)


def test_kl_metric_is_a_rescaled_logprob_at_the_clean_point(tiny_llama):
    """At α = 1, ∂[exp(p_c)(p_c − p)] = −exp(p_c)·p_c·∂(mean log p): EAP scores scale exactly."""
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    logprob = attribute(model, tok, SAMPLES, method="eap", metric="logprob")
    kl = attribute(model, tok, SAMPLES, method="eap", metric="kl")
    from cud_core.engine.metrics import teacher_forced_metrics
    p = torch.tensor([r["answer_prob"] for r in teacher_forced_metrics(model, tok, SAMPLES)])
    expected = -(p.exp() * p)[:, None, None] * logprob
    assert torch.allclose(kl, expected, atol=1e-6, rtol=1e-3)


def test_mean_baseline(tiny_llama):
    model, tok = tiny_llama.model, tiny_llama.tokenizer
    # the mean over a one-sample dataset is that sample: every Δ is zero
    assert attribute(model, tok, SAMPLES[:1], baseline="mean").abs().max() == 0
    scores = attribute(model, tok, SAMPLES, baseline="mean")
    assert scores.abs().max() > 0 and not torch.allclose(scores, attribute(model, tok, SAMPLES))


def test_bfloat16_scores_rank_like_float32():
    lm32 = tiny_model("llama", n_layers=2)
    lm16 = tiny_model("llama", n_layers=2)
    lm16.model.to(torch.bfloat16)
    a = attribute(lm32.model, lm32.tokenizer, SAMPLES[:1])[0]
    b = attribute(lm16.model, lm16.tokenizer, SAMPLES[:1])[0]
    mask = Graph.from_model(lm32.model).real_edge_mask
    assert b.dtype == torch.float32
    assert spearmanr(a[mask].abs(), b[mask].abs())[0] > 0.9
    from cud_core.engine.circuits import binarise, faithfulness
    f = faithfulness(lm16.model, lm16.tokenizer, SAMPLES[0], binarise(b, Graph.from_model(lm16.model), "top-n", 30))
    assert all(torch.isfinite(torch.tensor(v)) for v in f.values())


def test_bad_arguments_and_unsupported_models(tiny_llama):
    with pytest.raises(ValueError, match="unknown method 'eap-ig'; choose one of eap, eap-ig-inputs"):
        attribute(tiny_llama.model, tiny_llama.tokenizer, SAMPLES, method="eap-ig")
    with pytest.raises(ValueError, match="unknown baseline"):
        attribute(tiny_llama.model, tiny_llama.tokenizer, SAMPLES, baseline="noise")
    with pytest.raises(ValueError, match="no samples"):
        attribute(tiny_llama.model, tiny_llama.tokenizer, [])

    class Fake:
        class config:
            model_type = "bert"
    with pytest.raises(UnsupportedModelError, match="'bert'"):
        adapter_for(Fake())


def test_parameters_keep_their_gradient_flags(tiny_llama):
    flags = [p.requires_grad for p in tiny_llama.model.parameters()]
    attribute(tiny_llama.model, tiny_llama.tokenizer, SAMPLES[:1])
    assert [p.requires_grad for p in tiny_llama.model.parameters()] == flags
    assert all(p.grad is None for p in tiny_llama.model.parameters())


def test_mean_outputs_average_each_offset_from_the_prompt_end(tiny_llama):
    from cud_core.data.samples import encode
    from cud_core.engine.attribution import mean_outputs

    model, tok = tiny_llama.model, tiny_llama.tokenizer
    g = Graph.from_model(model)
    means = mean_outputs(model, tok, SAMPLES, g, batch_size=2)
    emb = model.get_input_embeddings()
    first_answer = []
    for s in SAMPLES:
        ids, mask = encode(tok, s)
        first_answer.append(emb(ids[int(mask.float().argmax())]))
    expected = torch.stack(first_answer).mean(0)  # the input node's output at offset 0
    got = means.take(torch.tensor([[0]]))[0, 0, 0]
    assert torch.allclose(got, expected.detach(), atol=1e-6)
    far = means.take(torch.tensor([[10_000]]))  # unseen offsets fall back to the nearest known one
    assert torch.equal(far, means.take(torch.tensor([[int(means.offsets.max())]])))


def _slow_peer(lm, sample, graph, steps, own_rows=False):
    """EAP-IG-activations as the reference code aggregates it, one pass at a time with explicit loops:
    for every group g (input, each layer's heads, each MLP) and k = 1..m, set g's outputs to
    baseline + (k/m)·Δ, take every downstream input's gradient (full forward from the embeddings), and
    add ⟨Δ_u, g_v⟩ into every edge; divide by the (2L + 1)·m passes. `own_rows`: the textbook variant,
    each pass adds into its own group's rows only, divided by m."""
    ad = adapter_for(lm.model)
    batch = collate(lm.tokenizer, [sample])
    base = _baseline_outputs(ad, graph, batch, None)
    clean = torch.zeros_like(base)
    with torch.no_grad():
        hooked.run(ad, graph, batch.input_ids, taps=hooked.Taps(capture=clean))
    delta = clean - base
    emb = ad.embed(batch.input_ids).detach()
    groups = [(slice(0, 1), "input", -1)]
    for layer in range(graph.n_layers):
        ls = graph.layer_start(layer)
        groups += [(slice(ls, ls + graph.n_heads), "heads", layer), (slice(ls + graph.n_heads, ls + graph.n_heads + 1),
                                                                     "mlp", layer)]
    total = torch.zeros(graph.n_forward, graph.n_backward)
    with torch.no_grad():
        p_clean = metric_per_sample(ad, hooked.run(ad, graph, batch.input_ids), batch, "logprob")[1].exp()
    for rows, kind, layer in groups:
        for k in range(1, steps + 1):
            a = k / steps
            got = {}

            def override(kk, ll, value, rows=rows, kind=kind, layer=layer, a=a):
                if kk != kind or ll != layer:
                    return value
                new = (base[:, rows] + a * delta[:, rows]).to(value.dtype)
                return new.transpose(1, 2) if kk == "heads" else new[:, 0]
            x0 = (base[:, 0] + a * delta[:, 0]) if kind == "input" else emb
            with torch.enable_grad():
                x0 = x0.detach().requires_grad_(True)
                taps = hooked.Taps(on_grad=lambda kk, ll, g: got.__setitem__((kk, ll), g.detach().float()),
                                   override=None if kind == "input" else override)
                patched = hooked.run(ad, graph, batch.input_ids, x0, taps)
                m = metric_per_sample(ad, patched, batch, "logprob", p_clean)[0]
                m.sum().backward()
            for f, b in graph.edges():  # no gradient reaches the inputs of an overridden group: 0
                name = graph.backward_names[b]
                if name == "logits":
                    g = got.get(("logits", graph.n_layers))
                elif name.startswith("m"):
                    g = got.get(("mlp", graph.backward_layer(b)))
                else:
                    head = int(name.split(".h")[1].split("<")[0])
                    g = got.get((name[-2], graph.backward_layer(b)))
                    g = None if g is None else g[:, :, head]
                if g is not None and (not own_rows or rows.start <= f < rows.stop):
                    total[f, b] += float((delta[0, f] * g[0]).sum())
    return total / (steps if own_rows else len(groups) * steps)


@pytest.mark.parametrize("family", FAMILIES)  # GQA (llama, qwen2), sliding window (mistral), parallel (gpt_neox)
def test_eap_ig_activations_peer_matches_a_slow_reference_aggregation(family):
    """The fast peer variant starts every pass at its layer and adds what the passes would have sent
    below it in one extra backward; the slow reference runs every pass in full from the embeddings."""
    lm = tiny_model(family, n_layers=3)
    graph = Graph.from_model(lm.model)
    fast = attribute(lm.model, lm.tokenizer, SAMPLES[:2], method="eap-ig-activations-peer", steps=3, batch_size=2)
    mask = graph.real_edge_mask
    for i in range(2):
        slow = _slow_peer(lm, SAMPLES[i], graph, 3)
        assert torch.allclose(fast[i][mask], slow[mask], atol=1e-6, rtol=1e-4)
    # and it differs from the textbook variant, which keeps each group's passes in its own rows
    ours = attribute(lm.model, lm.tokenizer, SAMPLES[:1], method="eap-ig-activations", steps=3)[0]
    assert not torch.allclose(fast[0][mask], ours[mask], atol=1e-4)
    one = attribute(lm.model, lm.tokenizer, SAMPLES[:1], method="eap-ig-activations-peer", steps=1)[0]
    assert torch.allclose(one[mask], _slow_peer(lm, SAMPLES[0], graph, 1)[mask], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "eap-ig-activations", "eap-ig-activations-peer"])
def test_several_metrics_from_the_same_passes_equal_separate_runs(tiny_llama, method):
    """attribute_metrics differentiates logprob and rescales its gradients per sample for kl: logprob is
    bit-identical to its own run, kl equal to float rounding, in either order."""
    from cud_core.engine.attribution import attribute_metrics

    model, tok = tiny_llama.model, tiny_llama.tokenizer
    for baseline in ("zero", "mean"):
        alone = {m: attribute(model, tok, SAMPLES, method=method, steps=3, baseline=baseline, metric=m, batch_size=3)
                 for m in ("logprob", "kl")}
        for order in (("logprob", "kl"), ("kl", "logprob")):
            both = attribute_metrics(model, tok, SAMPLES, method=method, steps=3, baseline=baseline, metrics=order,
                                     batch_size=3)
            assert torch.equal(both["logprob"], alone["logprob"])
            assert torch.allclose(both["kl"], alone["kl"], rtol=1e-5, atol=1e-6 * alone["kl"].abs().max())
            assert not torch.allclose(both["kl"], both["logprob"], atol=1e-6)
    with pytest.raises(ValueError, match="distinct"):
        attribute_metrics(model, tok, SAMPLES, metrics=("kl", "kl"))
    with pytest.raises(ValueError, match="unknown metric 'nll'"):
        attribute_metrics(model, tok, SAMPLES, metrics=("kl", "nll"))


@pytest.mark.parametrize("family", FAMILIES)  # GQA (llama, qwen2), sliding window (mistral), parallel (gpt_neox)
def test_eap_ig_activations_matches_full_passes_per_group(family):
    """The textbook variant starts each group's passes at its layer (from the clean residual stream)
    and shares the α = 1 pass; the slow reference runs every pass in full from the embeddings."""
    lm = tiny_model(family, n_layers=3)
    graph = Graph.from_model(lm.model)
    fast = attribute(lm.model, lm.tokenizer, SAMPLES[:1], method="eap-ig-activations", steps=3)[0]
    slow = _slow_peer(lm, SAMPLES[0], graph, 3, own_rows=True)
    mask = graph.real_edge_mask
    assert torch.allclose(fast[mask], slow[mask], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["rms", "layer"])
def test_norm_vjp_equals_autograd_for_every_cotangent(kind):
    """The closed-form VJP behind the per-head gradients (one matmul and a rank-1 update for RMSNorm)
    against torch.autograd, one cotangent at a time."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from cud_core.engine.adapters import norm_vjp

    torch.manual_seed(0)
    norm = LlamaRMSNorm(16, eps=1e-5) if kind == "rms" else torch.nn.LayerNorm(16)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x = torch.randn(2, 3, 16, requires_grad=True)
    g = torch.randn(2, 3, 4, 16)
    expected = torch.stack([torch.autograd.grad(norm(x), x, g[:, :, c])[0] for c in range(4)], 2)
    assert torch.allclose(norm_vjp(norm, x.detach(), g), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["eap-ig-activations", "eap-ig-activations-peer"])
def test_attribution_frees_its_autograd_graph(tiny_llama, method):
    """Nothing of a batch's forward survives the batch: the peer variant's entry residuals once sat on a
    reference cycle through the gradient hooks (C++ autograd nodes, invisible to Python's GC), which
    leaked each batch's activations, ~1.2 GB per batch of 4 on SmolLM2."""
    import gc
    import weakref

    graph = Graph.from_model(tiny_llama.model)
    adapter = adapter_for(tiny_llama.model)
    batch = collate(tiny_llama.tokenizer, SAMPLES[:2])
    entries = []

    def on_grad(kind, layer, g):
        pass

    emb = adapter.embed(batch.input_ids).detach().requires_grad_(True)
    x = hooked.run(adapter, graph, batch.input_ids, input_value=emb, taps=hooked.Taps(on_grad=on_grad, entries=entries))
    torch.autograd.backward(entries[1:], [torch.ones_like(e) for e in entries[1:]])
    alive = [weakref.ref(e) for e in entries[1:]] + [weakref.ref(x)]  # entries[0] is emb itself
    del entries, x
    gc.collect()
    assert all(r() is None for r in alive)
    # and end to end: the tensors alive after a run are the same before and after a second run
    def live():
        import warnings

        gc.collect()
        with warnings.catch_warnings():  # is_tensor on every object touches torch's deprecated aliases
            warnings.simplefilter("ignore", FutureWarning)
            return sum(o.numel() for o in gc.get_objects() if torch.is_tensor(o))

    attribute(tiny_llama.model, tiny_llama.tokenizer, SAMPLES, method=method, steps=2, batch_size=2)
    before = live()
    attribute(tiny_llama.model, tiny_llama.tokenizer, SAMPLES, method=method, steps=2, batch_size=2)
    assert live() == before
