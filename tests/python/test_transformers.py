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
        # Gemma 2: alternating local and global layers; softcapping refused (test below), so off here
        "gemma2": transformers.Gemma2Config(**COMMON, sliding_window=6, attn_logit_softcapping=None,
                                            final_logit_softcapping=30.0),
        "gemma3": transformers.Gemma3TextConfig(**COMMON, sliding_window=6,
                                                layer_types=["sliding_attention", "full_attention"]),
    }


# Gemma 2 has no "sdpa" in transformers; it is compared with "eager" only.
IMPLS = {"llama": ("eager", "sdpa"), "mistral": ("eager", "sdpa"), "gemma2": ("eager",), "gemma3": ("eager", "sdpa")}


@pytest.fixture(scope="module", autouse=True)
def registered():
    st.register()


def _model(name, impl):
    torch.manual_seed(0)
    cfg = copy.deepcopy(_configs()[name])  # a model keeps its config object: one each
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)


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


@pytest.mark.parametrize("name", ["mistral", "gemma3"])
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


def test_softcapping_is_refused_clearly():
    cfg = copy.deepcopy(_configs()["gemma2"])
    cfg.attn_logit_softcapping = 50.0
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="spattn")
    ids, _ = _batch()
    with pytest.raises(ValueError, match="softcap"):
        model(ids)


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
