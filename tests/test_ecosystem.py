"""The rest of the Hugging Face toolbox on pocketlm's models, as on a built-in transformers model: PEFT, TRL, the
Trainer, gradient checkpointing, hooks and quantization, each shown to take effect, not only to run."""

import random
import warnings

import pytest
import torch
from conftest import COUNTS_RECURRENT_TOKENS, SAMPLE_TEXT, tiny_model
from datasets import Dataset
from torch import nn
from transformers import AutoModelForCausalLM, TextIteratorStreamer, Trainer, TrainingArguments

from modeling import GPTForCausalLM

PROMPT = torch.tensor([[5, 9, 3, 17]])
# LoRA's targets: every linear layer of the GPT; the LSTM's own weights live in nn.LSTM, which PEFT cannot wrap,
# so its adapters go on the embedding and the output head.
LORA_TARGETS = {"transformer": ["c_attn", "c_proj", "c_fc"], "lstm": ["embed_tokens", "lm_head"]}
# A classifier has no lm_head; its new head, `score`, trains whole (PEFT's SEQ_CLS task saves it with the adapters).
CLASSIFIER_LORA_TARGETS = {"transformer": LORA_TARGETS["transformer"], "lstm": ["embed_tokens"]}


def greedy(model, input_ids=PROMPT, max_new_tokens=12):
    with torch.no_grad():
        return model.generate(input_ids=input_ids, max_new_tokens=max_new_tokens, do_sample=False)


def fit(model, sequence: torch.Tensor, steps: int, lr: float) -> None:
    """Train `model`'s trainable parameters on one sequence."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=sequence, labels=sequence).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


# ------------------------------------------------------------------------------------------------------- PEFT


def test_a_lora_adapter_changes_the_output_and_merging_or_reloading_it_keeps_it(family, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    base = tiny_model(family)
    before = greedy(base)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS[family],
                                                 task_type="CAUSAL_LM"))
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    # Teach the adapters a continuation the base model does not produce.
    target = torch.tensor([PROMPT[0].tolist() + [42] * 16])
    fit(peft_model, target, steps=60, lr=1e-2)
    tuned = greedy(peft_model)
    assert not torch.equal(tuned, before)
    assert tuned[0, 4:8].tolist() == [42] * 4

    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(tiny_model(family), tmp_path / "adapter").eval()
    assert torch.equal(greedy(reloaded), tuned)
    merged = peft_model.merge_and_unload()
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert torch.equal(greedy(merged), tuned)


def test_peft_prompt_learning_changes_the_gpt_s_output_and_the_lstm_refuses_a_prefix_in_one_line(family):
    """PEFT's methods beyond LoRA: prompt tuning feeds learned embeddings through `inputs_embeds`, prefix tuning
    learned keys and values through the cache. The LSTM has no keys and values: prefix tuning failed inside it on a
    missing attribute; it is refused naming what applies."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    target = torch.tensor([PROMPT[0].tolist() + [42] * 16])
    if family == "lstm":
        model = get_peft_model(tiny_model(family), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4,
                                                                      num_attention_heads=1, token_dim=64))
        with pytest.raises(ValueError, match="this LSTM carries a recurrent state, not attention keys and values"):
            model(input_ids=target, labels=target)
        return
    before = greedy(tiny_model(family))
    for config in (PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4),
                   PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)):
        model = get_peft_model(tiny_model(family), config)
        assert {name for name, p in model.named_parameters() if p.requires_grad} == {
            "prompt_encoder.default.embedding.weight"}
        fit(model, target, steps=60, lr=3e-2)
        assert not torch.equal(greedy(model), before)


def _decoding_error(peft_model, rows: list[list[int]], padded: bool, steps: int = 6, **generate_args) -> float:
    """The largest gap between the logits generate() decodes each token with (one row alone, or the rows in one
    left-padded batch) and PEFT's own forward over the row's tokens so far, which recomputes everything, its
    virtual tokens included."""
    settings = dict(max_new_tokens=steps, do_sample=False, pad_token_id=0, output_logits=True,
                    return_dict_in_generate=True, **generate_args)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a cache under its old name beside `cache` warns nothing
        if padded:
            width = max(map(len, rows))
            ids = torch.tensor([[0] * (width - len(row)) + row for row in rows])
            mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
            out = peft_model.generate(input_ids=ids, attention_mask=mask, **settings)
            decoded = [(out.sequences[i, width - len(row):], torch.stack([step[i] for step in out.logits]))
                       for i, row in enumerate(rows)]
        else:
            decoded = []
            for row in rows:
                out = peft_model.generate(input_ids=torch.tensor([row]), **settings)
                decoded.append((out.sequences[0], torch.cat(out.logits)))
    with torch.no_grad():
        return max((peft_model(input_ids=tokens[None, :len(row) + k]).logits[0, -1] - logits[k]).abs().max().item()
                   for row, (tokens, logits) in zip(rows, decoded) for k in range(steps))


@pytest.mark.parametrize("padded", [False, True], ids=["one-row", "left-padded"])
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_peft_prompt_learning_decodes_with_the_cache_what_the_model_predicts(method, padded):
    """PEFT 0.21 tells generate()'s first forward (which takes the virtual tokens) from the later ones by a cache
    named `past_key_values`; transformers 5.24 names it `cache`. So PEFT added its virtual tokens again at every
    step: prompt tuning decoded other tokens than the model predicts (a left-padded batch stopped on a mask of the
    wrong length) and prefix tuning dropped its prefix. Stock GPT-2 decodes wrongly here too; pocketlm's GPT hands
    PEFT the cache under both names, and decodes each token with the logits of PEFT's own cache-free forward."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    config = (PromptTuningConfig if method == "prompt" else PrefixTuningConfig)(task_type="CAUSAL_LM",
                                                                                num_virtual_tokens=4)
    model = get_peft_model(tiny_model("transformer"), config).eval()
    with torch.no_grad():  # learned-looking virtual tokens, far from the zeros and copies they start as
        model.prompt_encoder.default.embedding.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    assert _decoding_error(model, [[5, 9, 3], [7, 5, 9, 3, 11]], padded) < 1e-4


@pytest.mark.parametrize("padded", [False, True], ids=["one-row", "left-padded"])
def test_peft_prompt_tuning_on_the_lstm_decodes_what_it_predicts_with_the_cache(padded):
    """PEFT asks the cache how many tokens it has seen to leave its virtual tokens out after the first step. The
    LSTM's recurrent state said none (transformers counts tokens for linear attention only as it updates the
    convolution states the LSTM lacks), so PEFT added them again at every step and generate() needed
    use_cache=False to decode right; the state now counts the positions it has read, and the cache goes to PEFT
    under its old name too, as the GPT's does."""
    from peft import PromptTuningConfig, get_peft_model

    if not COUNTS_RECURRENT_TOKENS:
        pytest.skip("transformers 5.24 keeps no token count for a recurrent state")
    base = tiny_model("lstm")
    model = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4, num_attention_heads=1,
                                                    token_dim=base.get_input_embeddings().embedding_dim)).eval()
    with torch.no_grad():
        model.prompt_encoder.default.embedding.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    for use_cache in (True, False):
        assert _decoding_error(model, [[5, 9, 3], [7, 5, 9, 3, 11]], padded, use_cache=use_cache) < 1e-4, use_cache


# ------------------------------------------------------------------------------------- layers run as modules


def test_hooks_on_every_kind_of_gpt_layer_fire_in_inference_and_training():
    model = tiny_model("transformer")
    layers = {"embedding": model.model.wte, "norm": model.model.h[0].ln_1, "c_attn": model.model.h[0].attn.c_attn,
              "c_proj": model.model.h[1].attn.c_proj, "c_fc": model.model.h[1].mlp.c_fc, "final norm": model.model.ln_f,
              "head": model.lm_head}
    calls = dict.fromkeys(layers, 0)
    handles = [layer.register_forward_hook(lambda *args, name=name: calls.__setitem__(name, calls[name] + 1))
               for name, layer in layers.items()]
    ids = torch.randint(0, 64, (2, 10))
    greedy(model, max_new_tokens=3)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    for handle in handles:
        handle.remove()
    # Three decoding forwards, then one training forward, through every layer.
    assert calls == dict.fromkeys(layers, 4), calls


def test_the_fused_training_head_steps_aside_for_a_hooked_or_replaced_head():
    model = tiny_model("transformer").train()
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))

    def reference_loss():
        logits = model.lm_head(model.model(ids).last_hidden_state)
        return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())

    torch.manual_seed(0)
    fused = model(input_ids=ids, labels=ids)
    assert fused.logits is None  # the fast path: no logits materialised
    torch.manual_seed(0)
    torch.testing.assert_close(fused.loss, reference_loss())
    # A hook that doubles the logits must change the training loss exactly as it changes the logits.
    handle = model.lm_head.register_forward_hook(lambda module, args, output: output * 2)
    torch.manual_seed(0)
    hooked = model(input_ids=ids, labels=ids)
    torch.manual_seed(0)
    torch.testing.assert_close(hooked.loss, reference_loss())
    handle.remove()
    assert hooked.logits is not None and not torch.allclose(hooked.loss, fused.loss)


@pytest.mark.parametrize("layers", [{nn.Linear}, {nn.Linear, nn.LSTM}], ids=["linear", "linear+lstm"])
def test_dynamic_int8_quantization_swaps_the_layers_and_still_predicts(family, layers):
    model = tiny_model(family)
    ids = torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids).logits
    quantized = torch.ao.quantization.quantize_dynamic(model, layers, dtype=torch.qint8)
    assert "quantized" in type(quantized.lm_head).__module__
    with torch.no_grad():
        got = quantized(ids).logits
    assert not torch.equal(got, expected)  # the int8 layers ran
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.8
    assert greedy(quantized).shape == (1, PROMPT.shape[1] + 12)


# transformers' own quantizers, given as from_pretrained(quantization_config=...), that run on a CPU. Each replaces
# the weights of nn.Linear layers: quanto swaps in its QLinear, torchao gives the weight a quantized tensor type.
QUANTIZERS = ["quanto-int8", "quanto-int4", "torchao-int8-weights"]


def quantization_config(method: str):
    from transformers import QuantoConfig, TorchAoConfig

    if method == "torchao-int8-weights":
        from torchao.quantization import Int8WeightOnlyConfig

        return TorchAoConfig(Int8WeightOnlyConfig())
    return QuantoConfig(weights=method.removeprefix("quanto-"))


def holds_quantized_weights(layer: nn.Module) -> bool:
    return type(layer).__name__ == "QLinear" or type(layer.weight.data) is not torch.Tensor


@pytest.mark.parametrize("method", QUANTIZERS)
def test_transformers_quantizers_quantize_the_gpt_and_lora_trains_on_top(method, tmp_path):
    """As on a built-in model: from_pretrained(quantization_config=...) quantizes every linear layer of each block,
    the quantized model predicts what the full one does, and PEFT's LoRA trains on top of it (QLoRA's recipe)."""
    from peft import LoraConfig, get_peft_model

    tiny_model("transformer").save_pretrained(tmp_path)
    full = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    quantized = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quantization_config(method)).eval()
    assert quantized.is_quantized
    for block in quantized.model.h:
        for layer in (block.attn.c_attn, block.attn.c_proj, block.mlp.c_fc, block.mlp.c_proj):
            assert holds_quantized_weights(layer), (method, layer)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected, got = full(ids).logits, quantized(ids).logits
    assert not torch.equal(got, expected)  # the quantized layers ran
    assert (got - expected).abs().max() < 0.1 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() > 0.8

    before = greedy(quantized)
    lora = get_peft_model(quantized, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS["transformer"],
                                                task_type="CAUSAL_LM"))
    fit(lora, torch.tensor([PROMPT[0].tolist() + [42] * 16]), steps=60, lr=1e-2)
    tuned = greedy(lora)
    assert not torch.equal(tuned, before) and tuned[0, 4:8].tolist() == [42] * 4
    assert all(holds_quantized_weights(layer.base_layer) for layer in lora.modules() if hasattr(layer, "base_layer"))


def test_transformers_quantizers_find_nothing_to_quantize_in_the_lstm(tmp_path):
    """README's advice for the LSTM holds: its weights live in nn.LSTM, which transformers' quantizers do not
    handle, and its one linear layer is the output head, which they keep whole; torch.ao's quantize_dynamic does it
    (above)."""
    tiny_model("lstm").save_pretrained(tmp_path)
    full = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    quantized = AutoModelForCausalLM.from_pretrained(tmp_path,
                                                     quantization_config=quantization_config("quanto-int8")).eval()
    assert not any(holds_quantized_weights(layer) for layer in quantized.modules() if isinstance(layer, nn.Linear))
    with torch.no_grad():
        assert torch.equal(quantized(PROMPT).logits, full(PROMPT).logits)


# ----------------------------------------------------------------------------------- gradient checkpointing


def test_gradient_checkpointing_recomputes_layers_and_keeps_the_gradients(family):
    ids = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(4))
    gradients = []
    for checkpointing in (False, True):
        model = tiny_model(family).train()
        if checkpointing:
            model.gradient_checkpointing_enable()
            assert model.is_gradient_checkpointing
        # A module inside the checkpointed layer (a block; the LSTM's recurrence): transformers keeps hooks on the
        # checkpointed layer itself outside the checkpoint.
        inner = model.model.h[0].attn.c_attn if family == "transformer" else model.model.lstm
        runs = []
        inner.register_forward_pre_hook(lambda *args: runs.append(1))
        model(input_ids=ids, labels=ids).loss.backward()
        # Checkpointed, the layer runs again during backward instead of keeping its activations.
        assert len(runs) == (2 if checkpointing else 1)
        gradients.append({name: p.grad for name, p in model.named_parameters()})
    plain, checkpointed = gradients
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------- Trainer and TRL


def test_trainer_with_gradient_accumulation_equals_one_big_batch(family, tmp_path):
    """Trainer counts the targets of every micro-batch and passes the count to the model; a model that ignored it
    would average per micro-batch and scale the step by the number of micro-batches."""
    rows = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(5))
    labels = rows.clone()
    labels[0, :12] = -100  # micro-batches with very different numbers of targets
    dataset = Dataset.from_dict({"input_ids": rows.tolist(), "labels": labels.tolist()})
    weights = []
    for batch, accumulate in ((4, 1), (2, 2)):
        model = tiny_model(family)
        args = TrainingArguments(output_dir=str(tmp_path / f"{batch}"), per_device_train_batch_size=batch,
                                 gradient_accumulation_steps=accumulate, max_steps=1, learning_rate=1e-2,
                                 lr_scheduler_type="constant", report_to="none", use_cpu=True, save_strategy="no",
                                 dataloader_drop_last=False, seed=0, data_seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=dataset)
        trainer.get_train_dataloader = lambda trainer=trainer: torch.utils.data.DataLoader(  # keep the row order
            dataset.with_format("torch"), batch_size=batch, shuffle=False)
        trainer.train()
        weights.append({name: p.detach().clone() for name, p in model.named_parameters()})
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, rtol=1e-4, atol=1e-6, msg=name)


# Only characters of the tests' sample text, which the character tokenizer knows.
CONVERSATIONS = [
    {"messages": [{"role": "user", "content": "To be, or not to be:"},
                  {"role": "assistant", "content": "that is the question."}]},
    {"messages": [{"role": "system", "content": "Whether to suffer."}, {"role": "user", "content": "The slings,"},
                  {"role": "assistant", "content": "and arrows of outrageous fortune."}]},
] * 8


def test_the_chat_template_marks_exactly_the_assistant_text_and_its_end(family, tokenizer_for):
    tokenizer = tokenizer_for(family)
    encoded = tokenizer.apply_chat_template(CONVERSATIONS[1]["messages"], tokenize=True,
                                            return_assistant_tokens_mask=True, return_dict=True)
    marked = [token for token, mask in zip(encoded["input_ids"], encoded["assistant_masks"]) if mask]
    assert tokenizer.decode(marked) == "and arrows of outrageous fortune.<|end|>"


@pytest.mark.parametrize("assistant_only_loss", [False, True], ids=["all-tokens", "assistant-only"])
def test_trl_sft_trainer_fine_tunes_with_its_defaults(family, tokenizer_for, assistant_only_loss, tmp_path):
    from trl import SFTConfig, SFTTrainer

    tokenizer = tokenizer_for(family)
    model = tiny_model(family, vocab_size=len(tokenizer))
    # SFTConfig's defaults, gradient checkpointing among them; only the CPU, the length and the budget are set.
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, max_steps=12, per_device_train_batch_size=4,
                     learning_rate=1e-2, logging_steps=1, report_to="none", save_strategy="no", max_length=128,
                     assistant_only_loss=assistant_only_loss)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(CONVERSATIONS),
                         processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[1]])
    trained_on = tokenizer.decode(batch["labels"][batch["labels"] != -100])
    if assistant_only_loss:
        assert trained_on == "and arrows of outrageous fortune.<|end|>"
    else:
        assert "The slings," in trained_on and "outrageous fortune" in trained_on
    trainer.train()
    assert args.gradient_checkpointing and model.is_gradient_checkpointing
    losses = [record["loss"] for record in trainer.state.log_history if "loss" in record]
    assert losses[-1] < losses[0]


def reply_log_probability(model, tokenizer, prompt: list[dict], reply: list[dict]) -> float:
    """The model's log-probability of `reply`'s tokens after `prompt`, both rendered by the chat template."""
    start = len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
                ["input_ids"])
    ids = torch.tensor([tokenizer.apply_chat_template(prompt + reply, tokenize=True, return_dict=True)["input_ids"]])
    with torch.no_grad():
        log_probs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    return log_probs[start - 1 :].gather(-1, ids[0, start:, None]).sum().item()


def test_trl_dpo_trainer_raises_the_chosen_reply_over_the_rejected_one(family, tokenizer_for, tmp_path):
    """DPO, TRL's preference tuning of the language model itself, against its reference copy of the saved model."""
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    tokenizer = tokenizer_for(family)
    tiny_model(family, vocab_size=len(tokenizer)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")
    prompt = [{"role": "user", "content": "To be, or not to be:"}]
    chosen = [{"role": "assistant", "content": "that is the question."}]
    rejected = [{"role": "assistant", "content": "the slings and arrows."}]

    def margin() -> float:
        model.eval()
        return (reply_log_probability(model, tokenizer, prompt, chosen)
                - reply_log_probability(model, tokenizer, prompt, rejected))

    before = margin()
    # DPOConfig's defaults but float32 (as for the reward model above), the CPU and the budget.
    args = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, max_steps=20,
                     per_device_train_batch_size=4, learning_rate=5e-3, max_length=128, report_to="none",
                     save_strategy="no")
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=Dataset.from_list(
        [{"prompt": prompt, "chosen": chosen, "rejected": rejected}] * 32))
    trainer.train()
    assert margin() > before + 5  # nats: the chosen reply now far likelier than the rejected one, against before
    reference = AutoModelForCausalLM.from_pretrained(tmp_path / "lm")  # the saved model DPO measured against
    assert all(torch.equal(p, q) for p, q in zip(trainer.ref_model.parameters(), reference.parameters()))


def preference_pairs(count: int, seed: int) -> list[dict]:
    """Texts of the sample's words that differ in one word anywhere in them: the chosen one holds "fortune", the
    rejected one "troubles". Only a model that reads the whole text, not just its end, tells them apart."""
    words = sorted(set(SAMPLE_TEXT.replace(",", " ").replace(".", " ").replace(":", " ").split())
                   - {"fortune", "troubles"})
    rng = random.Random(seed)
    pairs = []
    for _ in range(count):
        text = rng.sample(words, rng.randint(3, 7))
        at = rng.randint(0, len(text))
        pairs.append({kind: " ".join(text[:at] + [word] + text[at:])
                      for kind, word in (("chosen", "fortune"), ("rejected", "troubles"))})
    return pairs


def test_trl_reward_trainer_with_a_lora_adapter_learns_which_text_is_preferred(family, tokenizer_for, tmp_path):
    """A saved language model is a reward model's start: RewardTrainer builds it through
    AutoModelForSequenceClassification (one label), PEFT adds the adapters and trains the new head with them, and the
    saved adapter reloads to the same rewards."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    tokenizer = tokenizer_for(family)
    tiny_model(family, vocab_size=len(tokenizer)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    held_out = preference_pairs(64, seed=1)

    def rewards(model) -> torch.Tensor:
        """Each held-out pair's chosen reward less its rejected one."""
        model.eval()
        scores = []
        for kind in ("chosen", "rejected"):
            batch = tokenizer([pair[kind] for pair in held_out], padding=True, return_tensors="pt")
            with torch.no_grad():
                scores.append(model(**batch).logits[:, 0])
        return scores[0] - scores[1]

    # RewardConfig's defaults but float32 (its bf16 autocast stays on the trained model's forward, and the reloaded
    # one is compared with it exactly), the CPU and the budget. The rates: each family's that learns the pairs under
    # any of a few seeds (the GPT overshoots at the LSTM's: 89% on one machine).
    args = RewardConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, max_steps=60,
                        per_device_train_batch_size=8, learning_rate={"transformer": 1e-2, "lstm": 3e-2}[family],
                        max_length=64, report_to="none", save_strategy="no")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=CLASSIFIER_LORA_TARGETS[family], task_type="SEQ_CLS")
    trainer = RewardTrainer(model=str(tmp_path / "lm"), args=args, processing_class=tokenizer, peft_config=lora,
                            train_dataset=Dataset.from_list(preference_pairs(256, seed=0)))
    assert type(trainer.model.base_model.model).__name__.endswith("ForSequenceClassification")
    before = rewards(trainer.model)
    trainer.train()
    after = rewards(trainer.model)
    assert (after > 0).float().mean() >= 0.95 > (before > 0).float().mean()
    assert after.mean() > 10 * before.abs().mean()  # the pairs ten times as far apart, on average, as at first

    trainer.save_model(tmp_path / "adapter")
    base = AutoModelForSequenceClassification.from_pretrained(tmp_path / "lm", num_labels=1,
                                                              pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(rewards(PeftModel.from_pretrained(base, tmp_path / "adapter")), after)


# ------------------------------------------------------------------------------ what already worked, kept


def test_beam_search_scores_streaming_and_assisted_decoding(family, tokenizer_for):
    import threading

    tokenizer = tokenizer_for(family)
    model = tiny_model(family, vocab_size=len(tokenizer))
    ids = tokenizer("To be, or not", return_tensors="pt").input_ids
    beams = model.generate(ids, num_beams=3, max_new_tokens=6, do_sample=False, output_scores=True,
                           return_dict_in_generate=True)
    assert beams.sequences_scores.shape == (1,) and len(beams.scores) == 6
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    worker = threading.Thread(target=model.generate, kwargs={"input_ids": ids, "max_new_tokens": 8,
                                                             "do_sample": False, "streamer": streamer})
    worker.start()
    streamed = "".join(streamer)
    worker.join()
    assert streamed == tokenizer.decode(greedy(model, ids, 8)[0, ids.shape[1]:], skip_special_tokens=True)
    assistant = tiny_model(family, vocab_size=len(tokenizer), seed=1)
    if family == "lstm":
        # A recurrent state cannot be rolled back past rejected draft tokens: the LSTM refuses up front, with a draft
        # model or prompt lookup (transformers 5.25 failed inside, on a TypeError, where 5.24 refused).
        for drafting in ({"assistant_model": assistant}, {"prompt_lookup_num_tokens": 2}):
            with pytest.raises(ValueError, match="not supported with stateful models, such as LSTMForCausalLM"):
                model.generate(ids, max_new_tokens=8, do_sample=False, **drafting)
        return
    assert torch.equal(model.generate(ids, assistant_model=assistant, max_new_tokens=8, do_sample=False),
                       greedy(model, ids, 8))


def test_bfloat16_loading_and_resized_embeddings_keep_the_head_tied(family, tmp_path):
    model = tiny_model(family)
    model.save_pretrained(tmp_path)
    narrow = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in narrow.parameters()} == {torch.bfloat16}
    assert greedy(narrow).shape[1] == PROMPT.shape[1] + 12
    model.resize_token_embeddings(80)
    assert model.get_input_embeddings().weight.shape[0] == model.get_output_embeddings().weight.shape[0] == 80
    if isinstance(model, GPTForCausalLM):
        assert model.lm_head.weight is model.model.wte.weight
    assert model(torch.tensor([[79, 3]])).logits.shape[-1] == 80

