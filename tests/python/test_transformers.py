"""spattn as a Hugging Face transformers attention implementation (spattn.integrations.transformers):
tiny random models built from configs in code (no downloads), against "eager" and "sdpa"."""
import copy

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import spattn  # noqa: E402
import spattn.integrations.transformers as st  # noqa: E402

VOCAB = 61
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=128)


def _configs():
    return {
        "llama": transformers.LlamaConfig(**COMMON),
        "mistral": transformers.MistralConfig(**COMMON, sliding_window=6),
        # Gemma 2: alternating local and global layers
        "gemma2": transformers.Gemma2Config(**COMMON, sliding_window=6, attn_logit_softcapping=None,
                                            final_logit_softcapping=30.0),
        # ... with attention logit softcapping (q and k weights scaled up in _model, so that the
        # scores reach the cap)
        "gemma2-softcap": transformers.Gemma2Config(**COMMON, sliding_window=6, attn_logit_softcapping=2.0,
                                                    final_logit_softcapping=30.0),
        "gemma3": transformers.Gemma3TextConfig(**COMMON, sliding_window=6,
                                                layer_types=["sliding_attention", "full_attention"]),
    }


# Gemma 2 has no "sdpa" in transformers; it is compared with "eager" only.
IMPLS = {"llama": ("eager", "sdpa"), "mistral": ("eager", "sdpa"), "gemma2": ("eager",), "gemma2-softcap": ("eager",),
         "gemma3": ("eager", "sdpa")}


@pytest.fixture(scope="module", autouse=True)
def registered():
    st.register()


def _model(name, impl):
    torch.manual_seed(0)
    cfg = copy.deepcopy(_configs()[name])  # a model keeps its config object: one each
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
    if name == "gemma2-softcap":  # random init gives scores of ~0.01: make them large enough to be capped
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(30.0)
                layer.self_attn.k_proj.weight.mul_(30.0)
    return model


def _batch(left_padding=True):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (2, 20), generator=gen)
    mask = torch.ones_like(ids)
    if left_padding:
        mask[1, :5] = 0
    else:
        mask[1, -5:] = 0
    return ids, mask


def test_registered_in_both_interfaces():
    from transformers import AttentionInterface, AttentionMaskInterface

    assert spattn.integrations.transformers is st  # reachable without importing the submodule
    assert AttentionInterface()["spattn"] is st.attention_forward
    assert AttentionMaskInterface()["spattn"] is st.mask_interface
    assert _model("llama", "spattn").config._attn_implementation == "spattn"


@pytest.mark.parametrize("name", list(_configs()))
def test_logits_match_eager_and_sdpa(name):
    ids, mask = _batch()
    model = _model(name, "spattn").eval()
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
        for impl in IMPLS[name]:
            want = _model(name, impl).eval()(ids, attention_mask=mask).logits
            # row 1 is left-padded: its padded positions are not compared (their rows see no key)
            torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got[1, 5:], want[1, 5:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(_configs()))
def test_greedy_generation_identical(name, monkeypatch):
    ids, mask = _batch()
    decoded = []
    real_decode = spattn.decode
    monkeypatch.setattr(spattn, "decode", lambda *a, **k: decoded.append(1) or real_decode(*a, **k))
    out = {}
    for impl in ("eager", "spattn"):
        model = _model(name, impl).eval()
        out[impl] = model.generate(ids, attention_mask=mask, max_new_tokens=32, min_new_tokens=32, do_sample=False)
    assert out["spattn"].shape == (2, 20 + 32)
    assert torch.equal(out["spattn"], out["eager"])
    # one padded row: the varlen path; without padding the new tokens go through spattn.decode
    model = _model(name, "spattn").eval()
    with torch.no_grad():
        model.generate(ids[:1], max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert decoded


@pytest.mark.parametrize("name", ["mistral", "gemma3", "gemma2-softcap"])
def test_training_step_gradients_match_eager(name):
    ids, mask = _batch(left_padding=False)  # right padding, as in training
    labels = ids.masked_fill(mask == 0, -100)
    grads = {}
    for impl in ("eager", "spattn"):
        model = _model(name, impl).train()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads["spattn"].keys() == grads["eager"].keys() and grads["spattn"]
    for n, g in grads["spattn"].items():
        torch.testing.assert_close(g, grads["eager"][n], rtol=1e-4, atol=1e-6, msg=n)


def test_softcapping_changes_the_result():
    # the softcap reaches the kernels: the same weights without it give other logits
    ids, mask = _batch()
    with torch.no_grad():
        capped = _model("gemma2-softcap", "spattn").eval()(ids, attention_mask=mask).logits
        model = _model("gemma2-softcap", "spattn").eval()
        for layer in model.model.layers:  # the same weights, no cap
            layer.self_attn.attn_logit_softcapping = None
        plain = model(ids, attention_mask=mask).logits
    assert (capped - plain).abs().max() > 1e-2


def _gpt_oss(impl):
    # GPT-OSS: learned attention sinks (s_aux), alternating sliding and full layers, a tiny MoE.
    if not hasattr(transformers, "GptOssConfig"):
        pytest.skip(f"transformers {transformers.__version__} has no GPT-OSS")
    torch.manual_seed(0)
    cfg = transformers.GptOssConfig(**{**COMMON, "intermediate_size": 16}, num_local_experts=4, num_experts_per_tok=2,
                                    sliding_window=6, layer_types=["sliding_attention", "full_attention"])
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
    with torch.no_grad():  # sinks of both signs, large enough to matter
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.linspace(-2.0, 2.0, layer.self_attn.sinks.numel()))
    return model


def test_gpt_oss_sinks_logits_generation_and_gradients():
    ids, mask = _batch(left_padding=False)
    with torch.no_grad():
        got = _gpt_oss("spattn").eval()(ids, attention_mask=mask).logits
        want = _gpt_oss("eager").eval()(ids, attention_mask=mask).logits
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1, :15], want[1, :15], rtol=1e-5, atol=1e-5)
    out = {impl: _gpt_oss(impl).eval().generate(ids[:1], max_new_tokens=32, min_new_tokens=32, do_sample=False)
           for impl in ("eager", "spattn")}
    assert torch.equal(out["spattn"], out["eager"])
    labels = ids.masked_fill(mask == 0, -100)
    grads = {}
    for impl in ("eager", "spattn"):
        model = _gpt_oss(impl).train()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        grads[impl] = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert any("sinks" in n for n in grads["spattn"])  # the sinks are learned through spattn
    assert grads["spattn"].keys() == grads["eager"].keys()
    for n, g in grads["spattn"].items():
        torch.testing.assert_close(g, grads["eager"][n], rtol=1e-4, atol=1e-6, msg=n)


def test_holes_in_the_padding_are_refused_clearly():
    ids, mask = _batch()
    mask[0, 7] = 0
    with pytest.raises(ValueError, match="contiguous"):
        _model("llama", "spattn")(ids, attention_mask=mask)


@pytest.mark.parametrize("name", ["gemma3"])
def test_greedy_generation_with_a_static_cache(name):
    ids, mask = _batch()
    out = {}
    for impl in ("eager", "spattn"):
        model = _model(name, impl).eval()
        out[impl] = model.generate(ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                                   cache_implementation="static")
    assert torch.equal(out["spattn"], out["eager"])
