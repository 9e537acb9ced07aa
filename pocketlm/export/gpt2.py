"""A pocketlm GPT as the stock transformers GPT-2 it is (no remote code, no pocketlm needed to load it), and a
stock GPT-2 as a pocketlm GPT (what `train.py --init-from` fine-tunes, as nanoGPT's init_from='gpt2' does).

pocketlm's GPT is GPT-2's architecture (pre-norm blocks, learned absolute positions, tanh-approximated GELU,
biases, a head tied to the token embedding unless its config unties it, as GPT-2's can), so its weights map one to
one onto `GPT2LMHeadModel`: the trunk's
`model.` becomes `transformer.`, and the linear layers are transposed, as GPT-2 keeps them in `Conv1D` layers that
store [in, out]. On a trained small model the logits came out equal to the last bit. The way back is the same map
run backwards, for the GPT-2s whose settings pocketlm's GPT computes (`import_problem`).
"""

from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from modeling import GPTConfig, GPTForCausalLM

# GPT-2's Conv1D layers: the weights stored transposed against nn.Linear's [out, in].
CONV1D_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def gpt2_config(config, tokenizer) -> GPT2Config:
    """The GPT2Config of a pocketlm GPTConfig: the same shape, no dropout, GPT-2's tanh GELU."""
    return GPT2Config(
        vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd, n_layer=config.n_layer,
        n_head=config.n_head, n_inner=4 * config.n_embd,
        activation_function="gelu_pytorch_tanh",  # the tanh approximation pocketlm trains with; "gelu" would differ
        layer_norm_epsilon=config.layer_norm_epsilon,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        # An untied head (`--model-config tie_word_embeddings=false`) exported tied computed other logits in silence.
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        architectures=["GPT2LMHeadModel"],
    )


def gpt2_weights(model, stock: GPT2LMHeadModel) -> dict[str, torch.Tensor]:
    """The GPT's weights under `stock` GPT2LMHeadModel's names and layouts. A model trained without biases
    (`--model-config bias=false`) gets zero biases, which GPT-2 always has: the same function."""
    weights, tied = {}, model.config.tie_word_embeddings
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            if not tied:
                weights[name] = tensor.detach().to(torch.float32).contiguous()
            continue  # tied: the token embedding is the head
        target = "transformer." + name.removeprefix("model.")
        if name.endswith(".weight") and any(f".{layer}." in name for layer in CONV1D_LAYERS):
            tensor = tensor.t()
        weights[target] = tensor.detach().to(torch.float32).contiguous()
    for name, expected in stock.state_dict().items():
        if name.endswith(".bias") and name not in weights:
            weights[name] = torch.zeros_like(expected)
    return weights


def to_gpt2(model, tokenizer) -> GPT2LMHeadModel:
    """A GPT2LMHeadModel computing what the pocketlm GPT `model` computes, with its generation settings."""
    stock = GPT2LMHeadModel(gpt2_config(model.config, tokenizer))
    missing, unexpected = stock.load_state_dict(gpt2_weights(model, stock), strict=False)
    tied_head = ["lm_head.weight"] if stock.config.tie_word_embeddings else []  # loaded as the token embedding
    if [name for name in missing if name not in tied_head] or unexpected:
        raise RuntimeError(f"the GPT's weights do not map onto GPT-2: missing {missing}, unexpected {unexpected}")
    stock.generation_config = model.generation_config
    return stock.eval()


def write_gpt2(model, tokenizer, folder: Path, with_weights: bool = True, *, is_chat: bool) -> list[Path]:
    """A folder `AutoModelForCausalLM.from_pretrained` loads as a GPT2LMHeadModel (weights, config, generation
    config) with the tokenizer, and a chat model's chat template; without weights, the folder an ONNX export sits
    in."""
    stock = to_gpt2(model, tokenizer)
    before = set(folder.rglob("*")) if folder.exists() else set()
    if with_weights:
        stock.save_pretrained(folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        stock.config.save_pretrained(folder)
        stock.generation_config.save_pretrained(folder)
    from . import save_export_tokenizer

    save_export_tokenizer(tokenizer, folder, is_chat)
    return sorted(path for path in folder.rglob("*") if path.is_file() and path not in before)


# ------------------------------------------------------------------------------------- a stock GPT-2 into pocketlm

# GPT-2's own GELU and transformers' name for the same tanh approximation, which pocketlm's GPT computes.
TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")


def import_problem(config: dict) -> str | None:
    """What in a GPT-2's saved config (`config.json`, read as a dict) pocketlm's GPT does not compute, said as the
    setting and its value; None for a GPT-2 it computes exactly (every GPT-2 and DistilGPT2 on the Hub)."""
    saved = {**GPT2Config().to_dict(), **config}  # a setting left out of the file is GPT-2's default
    computed = {
        "activation_function": saved["activation_function"] in TANH_GELUS,
        "n_inner": saved["n_inner"] in (None, 4 * saved["n_embd"]),  # pocketlm's MLP is 4 × n_embd wide
        "scale_attn_weights": saved["scale_attn_weights"] is True,
        "scale_attn_by_inverse_layer_idx": saved["scale_attn_by_inverse_layer_idx"] is False,
        "add_cross_attention": saved["add_cross_attention"] is False,
    }
    return next((f"{name}={saved[name]!r}" for name, ok in computed.items() if not ok), None)


def from_gpt2(stock: GPT2LMHeadModel, dropout: float | None = None) -> GPTForCausalLM:
    """The pocketlm GPT computing what the stock `stock` GPT2LMHeadModel computes (checked by `import_problem`
    first), for training: GPT-2's residual dropout unless `dropout` is given (pocketlm's GPT has one rate)."""
    source = stock.config
    config = GPTConfig(
        vocab_size=source.vocab_size, block_size=source.n_positions, n_layer=source.n_layer, n_head=source.n_head,
        n_embd=source.n_embd, dropout=source.resid_pdrop if dropout is None else dropout, bias=True,
        layer_norm_epsilon=source.layer_norm_epsilon, tie_word_embeddings=source.tie_word_embeddings,
        bos_token_id=source.bos_token_id, eos_token_id=source.eos_token_id, pad_token_id=source.pad_token_id,
    )
    model = GPTForCausalLM(config)
    weights = {}
    for name, tensor in stock.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: the token embedding is the head
        if name.endswith(".weight") and any(f".{layer}." in name for layer in CONV1D_LAYERS):
            tensor = tensor.t()
        target = name if name == "lm_head.weight" else "model." + name.removeprefix("transformer.")
        weights[target] = tensor.to(torch.float32).contiguous()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied_head = ["lm_head.weight"] if config.tie_word_embeddings else []
    if [name for name in missing if name not in tied_head] or unexpected:
        raise RuntimeError(f"GPT-2's weights do not map onto pocketlm's GPT: missing {missing}, unexpected "
                           f"{unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model
