"""What a transformers user may assume of a model, on both families, through transformers' public API: hidden states
and attentions (checked against a computation written out here), tuple outputs, a caller's own 4-D attention mask,
padding on the left, the right or in the middle, gradient checkpointing on padded batches, the deprecated cache
names, and generate()'s dictionary outputs. tests/test_transformers_common.py runs transformers' own common tests."""

import warnings

import pytest
import torch
from conftest import tiny_model
from torch import nn

VOCAB = 64


def padded(rows: list[list[int]], masks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(rows), torch.tensor(masks)


def alone(model, tokens: list[int]) -> torch.Tensor:
    """The logits of `tokens` run by themselves, unpadded."""
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


# ---------------------------------------------------------------------------------------------- hidden states


def test_the_gpt_returns_each_block_s_input_and_the_final_output_and_its_attention_probabilities():
    model = tiny_model("transformer", VOCAB)
    ids, mask = padded([[5, 6, 7, 8, 9, 10], [0, 0, 3, 4, 5, 6]], [[1] * 6, [0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        out = model(ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
        plain = model(ids, attention_mask=mask)
    config = model.config
    assert len(out.hidden_states) == config.n_layer + 1 and len(out.attentions) == config.n_layer
    torch.testing.assert_close(out.logits, plain.logits)  # asking costs nothing in what comes out
    trunk = model.model
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    torch.testing.assert_close(out.hidden_states[0], trunk.wte(ids) + trunk.wpe(positions))
    torch.testing.assert_close(out.hidden_states[-1], model.model(ids, attention_mask=mask).last_hidden_state)
    # Each block's attention probabilities, computed here from its own queries and keys.
    visible = torch.ones(6, 6, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
    for layer, (block, hidden) in enumerate(zip(trunk.h, out.hidden_states)):
        q, k, _ = block.attn.c_attn(block.ln_1(hidden)).view(2, 6, 3, config.n_head, -1).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
        expected = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        real = mask.bool()[:, None, :, None].expand_as(expected)  # rows of real queries
        torch.testing.assert_close(out.attentions[layer][real], expected[real])
        if layer + 1 < config.n_layer:  # the next entry is this block's output (the last is after the final norm)
            own = visible | torch.eye(6, dtype=torch.bool)  # a padding query sees itself, as in the model
            with torch.no_grad():
                output = block(hidden, attn_mask=own, is_causal=False)[0]
            torch.testing.assert_close(out.hidden_states[layer + 1][mask.bool()], output[mask.bool()])


def test_eager_and_sdpa_attention_agree_and_the_implementation_switches_at_run_time():
    from transformers import AttentionInterface

    from modeling.gpt.modeling_gpt import eager_attention

    model = tiny_model("transformer", VOCAB)
    ids, mask = padded([[5, 6, 7, 8, 9, 10], [0, 0, 3, 4, 5, 6]], [[1] * 6, [0, 0, 1, 1, 1, 1]])
    calls = []
    AttentionInterface.register("counted", lambda *args, **kwargs: calls.append(1) or eager_attention(*args, **kwargs))
    with torch.no_grad():
        sdpa = model(ids, attention_mask=mask).logits
        model.set_attn_implementation("eager")
        assert model.config._attn_implementation == "eager"
        eager = model(ids, attention_mask=mask).logits
        model.set_attn_implementation("counted")  # an attention of the user's own, through transformers' interface
        counted = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(eager[mask.bool()], sdpa[mask.bool()], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(counted, eager)
    assert len(calls) == model.config.n_layer


def test_the_lstm_returns_its_embeddings_and_each_layer_s_outputs():
    model = tiny_model("lstm", VOCAB)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        out = model(ids, output_hidden_states=True, output_attentions=True)
    config = model.config
    assert len(out.hidden_states) == config.num_layers + 1 and out.attentions is None  # an LSTM has no attention
    torch.testing.assert_close(out.hidden_states[0], model.model.embed_tokens(ids))
    # Each layer as a one-layer nn.LSTM of its own, carrying the stack's weights for that layer.
    stack, layer_input = model.model.lstm, out.hidden_states[0]
    for layer in range(config.num_layers):
        single = nn.LSTM(stack.input_size if layer == 0 else stack.hidden_size, stack.hidden_size, batch_first=True)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(single, f"{name}_l0").data.copy_(getattr(stack, f"{name}_l{layer}"))
        with torch.no_grad():
            layer_input, _ = single(layer_input)
        torch.testing.assert_close(out.hidden_states[layer + 1], layer_input)
    torch.testing.assert_close(out.hidden_states[-1], model.model(ids).last_hidden_state)


# ------------------------------------------------------------------------------------------- tuples, masks


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_return_dict_false_gives_the_tuple_of_the_output_s_fields(family):
    model = tiny_model(family, VOCAB)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        as_dict = model(ids, labels=ids, output_hidden_states=True)
        as_tuple = model(ids, labels=ids, output_hidden_states=True, return_dict=False)
        trunk = model.model(ids, return_dict=False)
    assert isinstance(as_tuple, tuple) and isinstance(trunk, tuple)
    assert len(as_tuple) == len(as_dict.to_tuple())
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits)
    model.config.return_dict = False  # the config's default, as built-in models read it
    with torch.no_grad():
        assert isinstance(model(ids), tuple)


@pytest.mark.parametrize("kind", ["boolean", "additive"])
def test_a_4d_attention_mask_gives_what_the_2d_mask_it_encodes_gives(kind):
    model = tiny_model("transformer", VOCAB)
    ids, mask = padded([[5, 6, 7, 8, 9, 10], [0, 0, 3, 4, 5, 6]], [[1] * 6, [0, 0, 1, 1, 1, 1]])
    allowed = torch.ones(6, 6, dtype=torch.bool).tril()[None, None] & mask.bool()[:, None, None, :]
    four_d = allowed if kind == "boolean" else torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo().min)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        got = model(ids, attention_mask=four_d, position_ids=positions).logits
        eager = model(ids, attention_mask=four_d, position_ids=positions, output_attentions=True).logits
    torch.testing.assert_close(got[mask.bool()], expected[mask.bool()])
    torch.testing.assert_close(eager[mask.bool()], expected[mask.bool()], atol=1e-5, rtol=1e-5)


def test_a_4d_mask_packs_two_sequences_into_one_row():
    model = tiny_model("transformer", VOCAB)
    first, second = [5, 6, 7], [8, 9, 10, 11]
    block = torch.zeros(7, 7, dtype=torch.bool)
    block[:3, :3], block[3:, 3:] = True, True
    mask = (block & torch.ones(7, 7, dtype=torch.bool).tril())[None, None]
    with torch.no_grad():
        packed = model(torch.tensor([first + second]), attention_mask=mask,
                       position_ids=torch.tensor([[0, 1, 2, 0, 1, 2, 3]])).logits[0]
    torch.testing.assert_close(packed[:3], alone(model, first))
    torch.testing.assert_close(packed[3:], alone(model, second))


# ------------------------------------------------------------------------------------------------- padding


PADDINGS = {
    "left": ([0, 0, 5, 6, 7, 8], [0, 0, 1, 1, 1, 1]),
    "right": ([5, 6, 7, 8, 0, 0], [1, 1, 1, 1, 0, 0]),
    "middle": ([5, 6, 0, 0, 7, 8], [1, 1, 0, 0, 1, 1]),
}


@pytest.mark.parametrize("side", list(PADDINGS))
@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_padding_anywhere_leaves_the_real_tokens_logits_as_without_it(family, side):
    model = tiny_model(family, VOCAB)
    row, row_mask = PADDINGS[side]
    ids, mask = padded([row, [9, 10, 11, 12, 13, 14]], [row_mask, [1] * 6])
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    real = [token for token, keep in zip(row, row_mask) if keep]
    torch.testing.assert_close(logits[0][mask[0].bool()], alone(model, real), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1], alone(model, [9, 10, 11, 12, 13, 14]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("side", list(PADDINGS))
def test_the_lstm_carries_forward_the_state_after_the_last_real_token(side):
    model = tiny_model("lstm", VOCAB)
    row, row_mask = PADDINGS[side]
    with torch.no_grad():
        first = model(torch.tensor([row]), attention_mask=torch.tensor([row_mask]), use_cache=True)
        then = model(torch.tensor([[20]]), attention_mask=torch.tensor([row_mask + [1]]), cache=first.cache).logits[0]
    real = [token for token, keep in zip(row, row_mask) if keep]
    torch.testing.assert_close(then[-1], alone(model, real + [20])[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_gradient_checkpointing_gives_the_same_gradients_on_padded_batches(family):
    model = tiny_model(family, VOCAB).train()
    ids, mask = padded([[0, 0, 5, 6, 7, 8], [5, 6, 0, 0, 7, 8]], [[0, 0, 1, 1, 1, 1], [1, 1, 0, 0, 1, 1]])
    labels = ids.masked_fill(mask == 0, -100)

    def gradients():
        model.zero_grad()
        model(ids, attention_mask=mask, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    # A module inside the checkpointed layer runs twice when the layer is recomputed in backward.
    inside = model.model.lstm if family == "lstm" else model.model.h[0].attn
    runs = []
    inside.register_forward_hook(lambda *args: runs.append(1))
    model.gradient_checkpointing_enable({"use_reentrant": False})
    checkpointed = gradients()
    assert len(runs) == 2  # forward, then again in backward: padded batches are checkpointed too
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


# ----------------------------------------------------------------------------------------- caches, generate


@pytest.mark.parametrize("family, old_name", [("transformer", "past_key_values"), ("lstm", "cache_params"),
                                              ("lstm", "past_key_values")])
def test_an_old_cache_name_still_works_and_warns(family, old_name):
    from transformers import DynamicCache

    model = tiny_model(family, VOCAB)
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = model(ids, use_cache=True, **{old_name: DynamicCache(config=model.config)})
        new = model(ids, use_cache=True, cache=DynamicCache(config=model.config))
    assert any(f"`{old_name}` is deprecated" in str(w.message) for w in caught), [str(w.message) for w in caught]
    torch.testing.assert_close(old.logits, new.logits)
    assert old.cache is not None


@pytest.mark.parametrize("mode", ["greedy", "sample", "beam", "beam-sample"])
def test_generate_returns_scores_attentions_and_hidden_states_when_asked(mode):
    options = {"greedy": {}, "sample": {"do_sample": True}, "beam": {"num_beams": 2},
               "beam-sample": {"num_beams": 2, "do_sample": True}}[mode]
    for family in ("transformer", "lstm"):
        model = tiny_model(family, VOCAB)
        torch.manual_seed(0)
        out = model.generate(torch.tensor([[5, 6, 7]]), max_new_tokens=4, min_new_tokens=4, return_dict_in_generate=True,
                             output_scores=True, output_attentions=True, output_hidden_states=True, **options)
        layers = model.config.num_hidden_layers
        assert len(out.scores) == 4 and len(out.hidden_states) == 4
        assert all(len(step) == layers + 1 for step in out.hidden_states)
        if family == "transformer":
            assert len(out.attentions) == 4 and all(len(step) == layers for step in out.attentions)
            assert out.attentions[-1][0].shape[-1] == 3 + 3  # the last step looks at the prompt and 3 new tokens


def test_assisted_decoding_reads_the_outputs_and_decodes_greedily():
    model, assistant = tiny_model("transformer", VOCAB), tiny_model("transformer", VOCAB, seed=1)
    ids = torch.tensor([[5, 6, 7]])
    expected = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(model.generate(ids, assistant_model=assistant, max_new_tokens=8, do_sample=False), expected)


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_generate_continues_from_the_cache_it_returned_as_from_the_whole_text(family):
    # A cache generate() returned has read the prompt and all but the last new token: given back with the sequences
    # and a new turn, generate() feeds it the rest only. For the LSTM that rests on the cache counting the tokens its
    # recurrent state has read (a state fed the whole text again would have advanced twice).
    from modeling.gpt.modeling_gpt import CACHE_FIELD

    model = tiny_model(family, VOCAB)
    prompt = torch.tensor([[5, 6, 7, 8]])
    first = model.generate(prompt, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
    turn = torch.cat([first.sequences, torch.tensor([[9, 10, 11]])], dim=1)
    afresh = model.generate(turn, max_new_tokens=6, do_sample=False)
    continued = model.generate(turn, max_new_tokens=6, do_sample=False, **{CACHE_FIELD: getattr(first, CACHE_FIELD)})
    assert torch.equal(continued, afresh)


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_generate_s_deferred_stop_check_returns_a_cache_that_continues(family, monkeypatch):
    # On MPS generate() reads the stop flag a step late and, when it returns the cache, rolls the extra step back
    # (transformers' DeferredStopCheck) if the cache says it can. The LSTM's cannot: under transformers 5.25 it
    # said it could and the roll-back failed (TypeError). No MPS here, so the check is told the device is MPS, and
    # the CUDA-style event it waits on, which the CPU lacks, is a no-op (CPU work is already done when it returns).
    from transformers.generation import utils as generation_utils

    from modeling.gpt.modeling_gpt import CACHE_FIELD

    deferred = generation_utils.DeferredStopCheck
    decide = deferred.is_supported
    monkeypatch.setattr(deferred, "is_supported", staticmethod(
        lambda device, *rest, **named: decide(torch.device("mps"), *rest, **named)))
    monkeypatch.setattr(torch, "Event", type("Event", (), {"__init__": lambda self, *a, **k: None,
                                                         "record": lambda self, *a: None,
                                                         "synchronize": lambda self: None}))
    model = tiny_model(family, VOCAB)
    prompt = torch.tensor([[5, 6, 7, 8]])
    out = model.generate(prompt, max_new_tokens=6, do_sample=False, return_dict_in_generate=True)
    monkeypatch.undo()
    assert torch.equal(out.sequences, model.generate(prompt, max_new_tokens=6, do_sample=False))
    turn = torch.cat([out.sequences, torch.tensor([[9, 10]])], dim=1)
    continued = model.generate(turn, max_new_tokens=4, do_sample=False, **{CACHE_FIELD: getattr(out, CACHE_FIELD)})
    assert torch.equal(continued, model.generate(turn, max_new_tokens=4, do_sample=False))


def test_the_chat_renders_the_conversation_afresh_for_every_reply(monkeypatch):
    # pocketlm's chat trims a long conversation to the context and drops what it cannot fit, so it renders the
    # conversation afresh for every reply rather than keep a cache that would hold the dropped turns.
    from tokenization import train_char_tokenizer

    from pocketlm.chat import ChatInterface

    tokenizer = train_char_tokenizer(["hello there, how are you? fine thanks."])
    model = tiny_model("lstm", len(tokenizer))
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda **kwargs: calls.append(kwargs) or generate(**kwargs))
    chat = ChatInterface(model, tokenizer, use_context=True, max_new_tokens=5, do_sample=False)
    chat.reply("hello")
    chat.reply("how are you?")
    assert len(calls) == 2 and not any("cache" in call or "past_key_values" in call for call in calls)
    second_prompt = tokenizer.decode(calls[1]["input_ids"][0])
    assert second_prompt.startswith("<|user|>hello<|end|><|assistant|>")  # the first exchange, rendered again
    assert second_prompt.endswith("<|user|>how are you?<|end|><|assistant|>")
