"""Behaviour both model families must share: saving, the Auto classes, caching and every generate() option."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import COUNTS_RECURRENT_TOKENS, PROJECT_FREE_PRELUDE, REPO_ROOT, sharpened, tiny_config, tiny_model
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, StaticCache, TextIteratorStreamer, pipeline
from transformers.generation import CompileConfig

from modeling import PRESETS, GPTConfig, GPTForCausalLM, GPTModel, LSTMConfig, LSTMForCausalLM, LSTMModel

PROMPT = torch.tensor([[5, 9, 3, 17, 22, 8]])


def greedy(model, input_ids=PROMPT, max_new_tokens=24, **options):
    return model.generate(input_ids, max_new_tokens=max_new_tokens, do_sample=False, **options)


def test_save_and_reload_is_bit_exact_and_pickle_free(family, tmp_path):
    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"model.safetensors", "config.json", "generation_config.json"} <= files
    assert not any(name.endswith((".bin", ".pt", ".pth", ".pkl")) for name in files)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(reloaded) is type(model)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(greedy(model), greedy(reloaded))


def test_auto_classes_resolve_both_families(family, tmp_path):
    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"].endswith("ForCausalLM")
    assert config["auto_map"]["AutoModel"].endswith(("GPTModel", "LSTMModel"))
    assert isinstance(AutoConfig.from_pretrained(tmp_path), type(model.config))
    base = AutoModel.from_pretrained(tmp_path)
    assert isinstance(base, GPTModel if family == "transformer" else LSTMModel)


def test_cached_greedy_decoding_matches_uncached(family):
    model = sharpened(tiny_model(family))
    cached = greedy(model, use_cache=True)
    assert torch.equal(cached, greedy(model, use_cache=False))
    assert len(set(cached[0, PROMPT.shape[1]:].tolist())) > 3


def test_beam_search_with_the_cache_matches_beam_search_without(family):
    """Beam search reorders the cache between steps; a wrong reorder or an in-place write to a shared state shows."""
    model = sharpened(tiny_model(family))
    options = {"num_beams": 3, "num_return_sequences": 3, "length_penalty": 0.0}
    assert torch.equal(greedy(model, use_cache=True, **options), greedy(model, use_cache=False, **options))


def test_incremental_forward_matches_full_forward(family):
    model = tiny_model(family)
    ids = torch.randint(0, 64, (2, 12))
    full = model(ids, use_cache=False).logits
    first = model(ids[:, :7], use_cache=True)
    step = model(ids[:, 7:], cache=first.cache, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, step.logits], 1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_gpt_static_cache_generates_like_the_dynamic_cache(attention):
    """The same tokens and logits, one prompt and a left-padded batch. Where transformers' mask builder leaves the
    mask out (a prompt without padding into the empty cache), the prompt attended to its later tokens and to the
    empty slots: a model whose greedy tokens change from step to step shows it (this tiny one at its initial
    scale repeats one token whatever it reads)."""
    model = sharpened(tiny_model("transformer"))
    model.set_attn_implementation(attention)
    padded = torch.tensor([[0, 0, 5, 9, 3], [7, 1, 2, 4, 6]])
    options = {"max_new_tokens": 10, "return_dict_in_generate": True, "output_logits": True, "pad_token_id": 0}
    for ids, mask in ((PROMPT, None), (padded, (padded != 0).long())):
        static = greedy(model, ids, attention_mask=mask, cache_implementation="static", **options)
        dynamic = greedy(model, ids, attention_mask=mask, **options)
        assert static.sequences.tolist() == dynamic.sequences.tolist()
        torch.testing.assert_close(torch.stack(static.logits), torch.stack(dynamic.logits))
    assert len(set(dynamic.sequences[1, 5:].tolist())) > 3
    # A forward into an empty static cache, as one without a cache (with the probabilities asked for, through the
    # eager attention whatever the implementation).
    for probabilities in (False, True):
        empty = StaticCache(config=model.config, max_cache_len=32)
        torch.testing.assert_close(model(PROMPT, cache=empty, output_attentions=probabilities).logits,
                                   model(PROMPT).logits)
    with pytest.raises(ValueError, match="cache slots exceed"):
        greedy(model, max_new_tokens=100, cache_implementation="static")


def test_gpt_static_cache_decode_step_compiles_as_one_graph():
    # fullgraph=True fails on any graph break; a recording backend that runs the captured graph as it is keeps
    # the test to seconds on a CPU (the GPU route, and bench/generate_throughput.py --static-compile, use inductor).
    graphs = []

    def recording_backend(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    model = tiny_model("transformer")
    config = CompileConfig(backend=recording_backend, mode=None, fullgraph=True, dynamic=False)
    config._compile_all_devices = True  # generate() compiles on CUDA only unless told otherwise
    compiled = greedy(model, cache_implementation="static", compile_config=config)
    assert len(graphs) == 1  # one graph serves every decoding step
    assert torch.equal(compiled, greedy(model))
    sharpened(model)  # tokens that change from step to step
    assert torch.equal(greedy(model, cache_implementation="static", compile_config=config), greedy(model))


def test_lstm_single_steps_match_nn_lstm_without_calling_it(monkeypatch):
    model = tiny_model("lstm")
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(2))
    full = model(ids, use_cache=False).logits
    calls, real_forward = [], torch.nn.LSTM.forward
    # Counted on the class, not with a hook: a hook on the module itself makes every step call it (next test).
    monkeypatch.setattr(torch.nn.LSTM, "forward", lambda self, x, *rest: calls.append(x.shape[1]) or real_forward(self, x, *rest))
    first = model(ids[:, :4], use_cache=True)
    steps = [first.logits] + [model(ids[:, i : i + 1], cache=first.cache).logits for i in range(4, 10)]
    assert calls == [4]  # nn.LSTM read the prompt; each later token went through torch.lstm_cell
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-4, atol=1e-5)


def test_a_hooked_lstm_sees_every_step_and_decodes_the_same_tokens():
    model = sharpened(tiny_model("lstm"))
    fast = greedy(model)
    seen = []
    handle = model.model.lstm.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    hooked = greedy(model)
    handle.remove()
    assert seen == [PROMPT.shape[1]] + [1] * 23  # the prompt, then one call per new token
    assert torch.equal(hooked, fast)


def test_each_generated_token_costs_one_position(family):
    """With the cache, the model sees the prompt once, then exactly one new token per step."""
    model = tiny_model(family)
    seen = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    greedy(model)
    handle.remove()
    assert seen[0] == PROMPT.shape[1]
    assert seen[1:] == [1] * (len(seen) - 1)


def test_left_padded_batch_generates_like_single_prompts(family):
    model = sharpened(tiny_model(family))
    pad = 0
    short = torch.tensor([[7, 3, 9]])
    long = torch.tensor([[4, 8, 15, 16, 23, 42]])
    batch = torch.tensor([[pad, pad, pad, 7, 3, 9], long[0].tolist()])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    together = model.generate(batch, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=pad)
    assert together[0, 6:].tolist() == greedy(model, short, max_new_tokens=10)[0, 3:].tolist()
    assert together[1, 6:].tolist() == greedy(model, long, max_new_tokens=10)[0, 6:].tolist()


@pytest.mark.parametrize("padded", [False, True], ids=["one prompt", "left-padded batch"])
def test_generation_continued_from_its_cache_is_one_generation(family, padded):
    """transformers' way to go on with a conversation: generate, then generate again from the sequences and the cache
    it returned. The cache must say how many tokens it has read, so the second call reads only the new ones: the
    LSTM's recurrent state said none, and the second call read the whole sequence again on top of it (other
    tokens). Prefill in chunks (`prefill_chunk_size`) reads the same count. The reference is one generate()."""
    if family == "lstm" and not COUNTS_RECURRENT_TOKENS:
        pytest.skip("transformers 5.24 keeps no token count for a recurrent state")
    model = sharpened(tiny_model(family))
    prompts, mask = PROMPT, torch.ones_like(PROMPT)
    if padded:
        prompts = torch.tensor([[0, 0, 0, 7, 3, 9], PROMPT[0].tolist()])
        mask = torch.tensor([[0, 0, 0, 1, 1, 1], [1] * 6])
    options = {"do_sample": False, "pad_token_id": 0, "return_dict_in_generate": True, "output_logits": True}
    whole = model.generate(prompts, attention_mask=mask, max_new_tokens=12, **options)

    first = model.generate(prompts, attention_mask=mask, max_new_tokens=5, **options)
    mask = torch.cat([mask, torch.ones(len(prompts), 5, dtype=mask.dtype)], 1)
    second = model.generate(first.sequences, attention_mask=mask, cache=first.cache, max_new_tokens=7, **options)
    assert second.sequences.tolist() == whole.sequences.tolist()
    torch.testing.assert_close(torch.stack(first.logits + second.logits), torch.stack(whole.logits))
    assert len(set(whole.sequences[-1, 6:].tolist())) > 3  # the tokens change, so a wrong read would show

    long = torch.cat([whole.sequences[:, :9], torch.ones(len(prompts), 4, dtype=torch.long)], 1)
    mask = torch.cat([mask[:, :9], torch.ones(len(prompts), 4, dtype=mask.dtype)], 1)
    in_one = model.generate(long, attention_mask=mask, max_new_tokens=6, **options)
    in_chunks = model.generate(long, attention_mask=mask, max_new_tokens=6, prefill_chunk_size=3, **options)
    assert in_chunks.sequences.tolist() == in_one.sequences.tolist()
    torch.testing.assert_close(torch.stack(in_chunks.logits), torch.stack(in_one.logits))


def test_a_prompt_given_as_embeddings_generates_as_its_tokens(family):
    """generate(inputs_embeds=...) (soft prompts, a prompt built from another model's vectors) looks for the
    argument in prepare_inputs_for_generation's signature, which the models' own versions hid behind **kwargs: it
    refused ("doesn't have its forwarding implemented"). One prompt and a left-padded batch, against the tokens."""
    model = sharpened(tiny_model(family))
    padded = torch.tensor([[0, 0, 5, 9, 3], [7, 1, 2, 4, 6]])
    options = {"max_new_tokens": 8, "return_dict_in_generate": True, "output_logits": True, "pad_token_id": 0}
    for ids, mask in ((PROMPT, None), (padded, (padded != 0).long())):
        embeddings = model.get_input_embeddings()(ids)
        by_tokens = greedy(model, ids, attention_mask=mask, **options)
        by_embeddings = model.generate(inputs_embeds=embeddings, attention_mask=mask, do_sample=False, **options)
        assert by_embeddings.sequences.tolist() == by_tokens.sequences[:, ids.shape[1]:].tolist()
        torch.testing.assert_close(torch.stack(by_embeddings.logits), torch.stack(by_tokens.logits))
        both = model.generate(ids, inputs_embeds=embeddings, attention_mask=mask, do_sample=False, **options)
        assert both.sequences.tolist() == by_tokens.sequences.tolist()


def test_an_lstm_cache_that_keeps_no_count_is_not_read_again_in_silence():
    """transformers 5.24 keeps no count of the tokens a recurrent state has read, and goes on from a returned cache
    by reading the whole sequence again on top of it: other tokens in silence. Its cache layers are made here by
    taking the count away (5.25's own generate() would then stop on the missing count before asking the model):
    the model's preparation of the first forward refuses, naming the release that counts; later steps go on."""
    model = tiny_model("lstm")
    first = model.generate(PROMPT, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    for layer in first.cache.layers:
        del layer.cumulative_length_linear
    with pytest.raises(ValueError, match=r"needs transformers 5\.25 or later.*without the cache"):
        model.prepare_inputs_for_generation(first.sequences, cache=first.cache, is_first_iteration=True)
    later = model.prepare_inputs_for_generation(first.sequences[:, -1:], cache=first.cache, is_first_iteration=False)
    assert later["past_key_values"] is later["cache"] is first.cache


@pytest.mark.parametrize(
    "options",
    [
        {"temperature": 0.7},
        {"top_k": 5},
        {"top_p": 0.8},
        {"repetition_penalty": 1.3},
        {"temperature": 0.8, "top_k": 50, "top_p": 0.9, "repetition_penalty": 1.2},
    ],
)
def test_sampling_options_are_seeded_and_honoured(family, options):
    model = tiny_model(family)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        runs.append(model.generate(PROMPT, do_sample=True, max_new_tokens=16, **options))
    assert torch.equal(runs[0], runs[1])
    assert runs[0].shape == (1, PROMPT.shape[1] + 16)


def test_top_k_of_one_is_greedy(family):
    model = sharpened(tiny_model(family))
    torch.manual_seed(0)
    sampled = model.generate(PROMPT, do_sample=True, top_k=1, max_new_tokens=24)
    assert torch.equal(sampled, greedy(model))


def test_repetition_penalty_changes_greedy_output(family):
    model = tiny_model(family)
    # Tiny random models repeat themselves under greedy decoding; a strong penalty must break that.
    plain = greedy(model, max_new_tokens=40)
    penalised = greedy(model, max_new_tokens=40, repetition_penalty=5.0)
    assert not torch.equal(plain, penalised)
    assert len(set(penalised[0, 6:].tolist())) > len(set(plain[0, 6:].tolist()))


def test_eos_token_stops_generation(family):
    model = tiny_model(family)
    stop = greedy(model)[0, PROMPT.shape[1] + 3].item()
    out = greedy(model, eos_token_id=stop)
    assert out[0, -1].item() == stop
    assert out.shape[1] <= PROMPT.shape[1] + 4


def test_streamer_and_pipeline_produce_text(family, tokenizer_for):
    tokenizer = tokenizer_for(family)
    model = tiny_model(family, vocab_size=len(tokenizer))
    ids = tokenizer("To be, or not", return_tensors="pt").input_ids
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(ids, max_new_tokens=12, do_sample=False, streamer=streamer)
    streamed = "".join(streamer)
    assert streamed == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    result = generator("To be, or not", max_new_tokens=8, do_sample=False)
    assert result[0]["generated_text"].startswith("To be, or not")


def test_gpt_refuses_sequences_beyond_its_context_with_a_clear_error():
    model = tiny_model("transformer")
    with pytest.raises(ValueError, match="context window of 64"):
        model(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_loading_the_other_family_names_both_types(family, tmp_path):
    tiny_model(family).save_pretrained(tmp_path)
    other = LSTMForCausalLM if family == "transformer" else GPTForCausalLM
    found = "pocketlm_gpt" if family == "transformer" else "pocketlm_lstm"
    with pytest.raises(ValueError, match=f"cannot load a {found} checkpoint into an? (LSTM|GPT)"):
        other.from_pretrained(tmp_path)


def test_loading_a_foreign_model_names_its_type(tmp_path):
    from transformers import GPT2Config

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="cannot load a gpt2 checkpoint into a GPT"):
        GPTForCausalLM.from_pretrained(tmp_path)


@pytest.mark.parametrize("family, field, value, needle", [
    ("transformer", "n_embd", "abc", "n_embd must be a whole number of at least 1, got 'abc'"),
    ("transformer", "n_layer", 0, "n_layer must be a whole number of at least 1, got 0"),
    ("transformer", "n_head", 2.0, "n_head must be a whole number of at least 1, got 2.0"),
    ("transformer", "dropout", float("nan"), "dropout must be a number of at least 0 and below 1, got nan"),
    ("transformer", "use_cache", "maybe", "use_cache must be true or false"),
    ("transformer", "eos_token_id", [3, -1], "eos_token_id must be a token id, a list of them, or null"),
    ("transformer", "layer_norm_epsilon", 0, "layer_norm_epsilon must be a number above 0"),
    ("lstm", "hidden_size", 0, "hidden_size must be a whole number of at least 1, got 0"),
    ("lstm", "num_layers", True, "num_layers must be a whole number of at least 1, got True"),
    ("lstm", "dropout", 1, "dropout must be a number of at least 0 and below 1, got 1"),
    ("lstm", "pad_token_id", "0", "pad_token_id must be a token id"),
])
def test_a_config_refuses_a_field_of_the_wrong_type_or_range_by_name(family, field, value, needle, tmp_path):
    """As transformers' own configs check their fields when built, so that a wrong one is named where it enters
    instead of failing inside the model (a string n_embd did, with a string-formatting error); a hand-edited
    config.json is refused the same way when the folder loads."""
    config_class = GPTConfig if family == "transformer" else LSTMConfig
    with pytest.raises(ValueError) as refused:
        config_class(**{field: value})
    assert needle in str(refused.value)
    tiny_config(family).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**saved, field: value}))
    with pytest.raises(ValueError) as refused:
        AutoConfig.from_pretrained(tmp_path)
    assert needle.split(", got")[0] in str(refused.value)


def test_presets_have_the_promised_sizes():
    expected = {"small": (2e6, 256), "medium": (8e6, 512), "large": (30e6, 1024)}
    for name, (params, context) in expected.items():
        config = GPTConfig.from_preset(name, vocab_size=5000)
        model = GPTForCausalLM(config)
        count = sum(p.numel() for p in model.parameters())
        assert 0.75 * params < count < 1.25 * params, (name, count)
        assert config.block_size == context
    assert GPTConfig.small(vocab_size=5000).to_dict() == GPTConfig.from_preset("small", vocab_size=5000).to_dict()
    assert set(PRESETS) == {"small", "medium", "large"}
    with pytest.raises(ValueError, match="unknown model size 'huge'"):
        GPTConfig.from_preset("huge")


def test_lstm_defaults_match_the_old_system():
    config = LSTMForCausalLM(tiny_config("lstm").__class__()).config
    assert (config.num_layers, config.hidden_size) == (2, 256)


PROJECT_FREE_LOAD = PROJECT_FREE_PRELUDE + textwrap.dedent(
    """
    import torch
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoTokenizer)
    model = AutoModelForCausalLM.from_pretrained({folder!r}, trust_remote_code=True).eval()
    # AutoTokenizer reads config.json too, so it needs the same trust as the model.
    tokenizer = AutoTokenizer.from_pretrained({folder!r}, trust_remote_code=True)
    ids = tokenizer("To be, or not", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=16, do_sample=False)
    # The trunk and the config resolve the same way, and the trunk computes the causal model's hidden states.
    config = AutoConfig.from_pretrained({folder!r}, trust_remote_code=True)
    trunk = AutoModel.from_pretrained({folder!r}, trust_remote_code=True).eval()
    assert type(config).__name__.endswith("Config") and type(trunk).__name__.endswith("Model"), (config, trunk)
    # A language model's folder is a classifier's starting point too (Trainer, TRL's RewardTrainer), its new head
    # initialised: the saved code holds that class as well.
    classifier = AutoModelForSequenceClassification.from_pretrained({folder!r}, trust_remote_code=True,
                                                                    num_labels=3).eval()
    assert type(classifier).__name__.endswith("ForSequenceClassification"), classifier
    with torch.no_grad():
        assert torch.equal(trunk(ids).last_hidden_state, model.model(ids).last_hidden_state)
        assert torch.equal(classifier.model(ids).last_hidden_state, model.model(ids).last_hidden_state)
        assert classifier(ids).logits.shape == (1, 3)
    print(type(model).__module__, out[0].tolist())
    """
)


def test_saved_folder_loads_without_pocketlm(family, tokenizer_for, tmp_path):
    tokenizer = tokenizer_for(family)
    model = tiny_model(family, vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    ids = tokenizer("To be, or not", return_tensors="pt").input_ids
    expected = model.generate(ids, max_new_tokens=16, do_sample=False)[0].tolist()
    script = PROJECT_FREE_LOAD.format(root=str(REPO_ROOT), folder=str(tmp_path / "model"))
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    module, tokens = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert module.startswith("transformers_modules"), result.stdout
    assert json.loads(tokens) == expected


def test_fused_head_and_loss_match_cross_entropy(monkeypatch):
    from modeling.gpt import modeling_gpt

    monkeypatch.setattr(modeling_gpt, "HEAD_CHUNK_ELEMENTS", 64 * 7)  # several chunks, the last one partial
    torch.manual_seed(0)
    hidden = torch.randn(50, 16, requires_grad=True)
    weight = torch.randn(64, 16, requires_grad=True)
    targets = torch.randint(0, 64, (50,))
    targets[::7] = -100
    fused = modeling_gpt.LinearCrossEntropy.apply(hidden, weight, targets)
    fused_grads = torch.autograd.grad(fused * 3, (hidden, weight))
    reference = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, ignore_index=-100)
    reference_grads = torch.autograd.grad(reference * 3, (hidden, weight))
    torch.testing.assert_close(fused, reference)
    for ours, theirs in zip(fused_grads, reference_grads):
        torch.testing.assert_close(ours, theirs)


def test_gpt_dropout_zeroes_at_rate_p_keeps_the_mean_and_routes_gradients_through_kept_elements():
    from modeling.gpt.modeling_gpt import Dropout

    torch.manual_seed(0)
    x = (torch.rand(200_000) + 1.0).requires_grad_()  # no zeros of its own
    dropout = Dropout(0.25)
    y = dropout(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.25) < 0.01
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(grad, kept.float() / 0.75)
    assert dropout.eval()(x) is x and Dropout(0.0)(x) is x


def test_training_loss_equals_evaluation_loss(family):
    model = tiny_model(family)
    ids = torch.randint(0, 64, (3, 20))
    evaluation = model(input_ids=ids, labels=ids).loss
    model.train()
    training = model(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(training, evaluation)


@pytest.mark.parametrize("training", [False, True])
def test_a_batch_without_targets_has_loss_zero_and_no_gradient(family, training):
    """A completion-only batch whose block holds none of the reply (every label -100) teaches nothing: its loss is
    0 with zero gradients, in both families and on both of the Transformer's loss paths, not NaN, which would
    poison an accumulated step."""
    model = tiny_model(family).train(training)
    ids = torch.randint(0, 64, (2, 12))
    loss = model(input_ids=ids, labels=torch.full_like(ids, -100)).loss
    loss.backward()
    assert loss.item() == 0.0
    assert all(not p.grad.any() for p in model.parameters() if p.grad is not None)
    # One kept target is a plain mean again, the same as cross-entropy over that one position.
    labels = torch.full_like(ids, -100)
    labels[1, 5] = ids[1, 5]
    with torch.no_grad():
        one = model(input_ids=ids, labels=labels).loss
        logits = model.eval()(input_ids=ids).logits
    torch.testing.assert_close(one, torch.nn.functional.cross_entropy(logits[1, 4:5], ids[1, 5:6]))


def test_generation_helpers_keep_the_most_recent_tokens_of_a_long_prompt(tokenizer_for):
    from pocketlm.generation import complete, fit_to_context

    tokenizer = tokenizer_for("transformer")
    model = tiny_model("transformer", vocab_size=len(tokenizer))  # a 64-token window
    ids = torch.arange(200)[None] % len(tokenizer)
    kept, new_tokens = fit_to_context(ids, model, max_new_tokens=16)
    assert kept.shape[1] + new_tokens == 64 and torch.equal(kept[0], ids[0, -48:])
    assert isinstance(complete(model, tokenizer, "To be, or not to be " * 40, max_new_tokens=16), str)
    lstm = tiny_model("lstm")
    assert fit_to_context(ids, lstm, max_new_tokens=16)[0].shape[1] == 200  # no window to fit


@pytest.mark.parametrize("temperature, top_k, top_p", [(0.7, 50, 0.9), (1.3, 5, 1.0), (1.0, 200, 0.5), (0.8, 300, 0.95)])
def test_fused_top_k_top_p_keeps_what_transformers_warpers_keep(temperature, top_k, top_p):
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from pocketlm.generation import TopKTopPSampling

    scores = torch.randn(3, 300, generator=torch.Generator().manual_seed(0)) * 4
    chain = LogitsProcessorList(
        [TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k), TopPLogitsWarper(top_p)]
    )
    expected = chain(None, scores.clone())
    fused = TopKTopPSampling(temperature, top_k, top_p)(None, scores.clone())
    assert torch.equal(fused.isinf(), expected.isinf())  # the same tokens survive
    torch.testing.assert_close(fused.softmax(-1), expected.softmax(-1))


def test_fused_sampling_draws_the_same_tokens_as_generate_options(family):
    from pocketlm.choices import BALANCED_SAMPLING
    from pocketlm.generation import sampling_arguments

    model = tiny_model(family)
    torch.manual_seed(3)
    stock = model.generate(PROMPT, max_new_tokens=24, **BALANCED_SAMPLING)
    torch.manual_seed(3)
    fused = model.generate(PROMPT, max_new_tokens=24, **sampling_arguments(model.generation_config, BALANCED_SAMPLING))
    assert torch.equal(fused, stock)
    assert sampling_arguments(model.generation_config, {"do_sample": False}) == {"do_sample": False}


def test_the_lstm_learns_as_fast_as_the_plain_pytorch_model_of_its_shape():
    """Ours against nn.Embedding + nn.LSTM + nn.Linear with PyTorch's own initialisation (bench/train_throughput.py's
    BareLSTM), on the same batches with the same optimizer. When the LSTM took transformers' GPT conventions
    (normal init at std 0.02), its loss here was about twice the twin's; bench/lstm_vs_torch.py runs the full size."""
    import statistics

    sys.path.insert(0, str(REPO_ROOT / "bench"))
    from train_throughput import BareLSTM

    from conftest import SAMPLE_TEXT

    chars = sorted(set(SAMPLE_TEXT))
    text = torch.tensor([chars.index(c) for c in SAMPLE_TEXT])
    config = LSTMConfig(vocab_size=len(chars), embedding_dim=16, hidden_size=64, num_layers=2, dropout=0.0)
    ours_losses, twin_losses = [], []
    for seed in range(3):
        torch.manual_seed(seed)
        ours, twin = LSTMForCausalLM(config), BareLSTM(config)
        optimizers = [torch.optim.AdamW(model.parameters(), lr=1e-2) for model in (ours, twin)]
        batches = torch.Generator().manual_seed(seed)
        for step in range(60):
            starts = torch.randint(len(text) - 32, (16,), generator=batches).tolist()
            batch = torch.stack([text[s : s + 32] for s in starts])
            for model, optimizer, losses in ((ours, optimizers[0], ours_losses), (twin, optimizers[1], twin_losses)):
                loss = model(input_ids=batch, labels=batch).loss if model is ours else model(batch, batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                if step >= 20:  # the learning after the first steps, averaged over the rest
                    losses.append(loss.item())
    assert statistics.mean(ours_losses) <= 1.1 * statistics.mean(twin_losses)


@pytest.mark.parametrize("family, installed", [("gpt", "4.57.6"), ("lstm", "5.23.0")])
def test_below_its_minimum_transformers_a_model_says_which_version_it_needs(family, installed):
    """bench/transformers_versions.py runs the real releases in their own virtualenvs; here the check itself, as
    the Hub copy of the config file runs it (imported alone, where pocketlm is not installed)."""
    config_file = REPO_ROOT / "modeling" / family / f"configuration_{family}.py"
    script = textwrap.dedent(f"""
        import importlib.util, transformers
        transformers.__version__ = {installed!r}
        spec = importlib.util.spec_from_file_location("configuration", {str(config_file)!r})
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    minimum = {"gpt": "5.0.0", "lstm": "5.24.0"}[family]
    assert f"ImportError: this pocketlm {family.upper()} model needs transformers>={minimum}, but {installed} is " \
           f"installed: pip install -U 'transformers>={minimum}'" in result.stderr, result.stderr[-2000:]
