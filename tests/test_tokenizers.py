"""Tokenizers: exact round trips, the unknown-character fallback, special tokens and the chat template."""

import random
import re

import pytest
from conftest import SAMPLE_TEXT
from transformers import AutoTokenizer

from tokenization import END_OF_TURN, MIN_VOCAB_SIZE, ROLE_TOKENS, train_bpe_tokenizer

UNICODE_SAMPLES = [
    "plain ASCII, with punctuation!?",
    "accents: café, naïve, Ångström",
    "CJK: 你好，世界 こんにちは 안녕하세요",
    "emoji: 🤖👩🏽‍💻🇫🇷",
    "right-to-left: مرحبا بالعالم שלום",
    "control:\x00\x01\t\r\n\x7f and CRLF\r\n",
    "  leading and trailing spaces  ",
    "",
]


def random_unicode(rng: random.Random, length: int) -> str:
    # Any code point except lone surrogates, which are not valid in UTF-8 text.
    points = (rng.randrange(0x110000) for _ in range(length))
    return "".join(chr(p) for p in points if not 0xD800 <= p <= 0xDFFF)


@pytest.fixture(scope="module")
def saved_bpe(bpe_tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bpe")
    bpe_tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("text", UNICODE_SAMPLES)
def test_bpe_round_trips_any_text(saved_bpe, text):
    assert saved_bpe.decode(saved_bpe.encode(text)) == text


def test_bpe_round_trips_random_code_points(saved_bpe):
    rng = random.Random(0)
    for _ in range(200):
        text = random_unicode(rng, rng.randrange(1, 40))
        assert saved_bpe.decode(saved_bpe.encode(text)) == text


def test_bpe_learns_merges_up_to_the_vocabulary_size():
    tokenizer = train_bpe_tokenizer([SAMPLE_TEXT * 5], vocab_size=400)
    assert len(tokenizer) <= 400
    assert len(tokenizer.encode("To be, or not to be")) < len("To be, or not to be") / 2


def test_bpe_refuses_a_vocabulary_below_bytes_plus_specials():
    with pytest.raises(ValueError, match=f"at least {MIN_VOCAB_SIZE}"):
        train_bpe_tokenizer(["hello"], vocab_size=100)


def test_char_tokenizer_round_trips_seen_characters(char_tokenizer, tmp_path):
    char_tokenizer.save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    ids = tokenizer.encode(SAMPLE_TEXT)
    assert len(ids) == len(SAMPLE_TEXT)
    assert tokenizer.decode(ids) == SAMPLE_TEXT


def test_char_tokenizer_maps_unseen_characters_to_unknown(char_tokenizer):
    ids = char_tokenizer.encode("to 🤖 be")
    assert char_tokenizer.unk_token_id in ids
    assert char_tokenizer.decode(ids) == "to <unk> be"


def test_char_tokenizer_gives_each_character_its_own_token_and_special_tokens_whole(char_tokenizer):
    # The reference, written here by hand: special tokens matched first, then a token per character, <unk> for
    # an unseen one (one per character, never fused).
    vocabulary = char_tokenizer.get_vocab()
    specials = "|".join(re.escape(token) for token in char_tokenizer.all_special_tokens)
    rng = random.Random(1)
    alphabet = [*SAMPLE_TEXT, "🤖", "é", "\n", " ", "\t"]
    for _ in range(100):
        pieces = [rng.choice(char_tokenizer.all_special_tokens) if rng.random() < 0.2 else
                  "".join(rng.choices(alphabet, k=rng.randrange(0, 12))) for _ in range(rng.randrange(1, 6))]
        text = "".join(pieces)
        expected = [vocabulary.get(part, char_tokenizer.unk_token_id) for chunk in re.split(f"({specials})", text) for part in
                    ([chunk] if chunk in char_tokenizer.all_special_tokens else list(chunk))]
        assert char_tokenizer(text)["input_ids"] == expected, text


def test_both_tokenizers_define_end_padding_and_chat_tokens(char_tokenizer, bpe_tokenizer):
    for tokenizer in (char_tokenizer, bpe_tokenizer):
        assert tokenizer.eos_token == "<|endoftext|>" and tokenizer.pad_token == "<|pad|>"
        assert tokenizer.eos_token_id != tokenizer.pad_token_id
        for token in [END_OF_TURN, *ROLE_TOKENS.values()]:
            assert tokenizer.convert_tokens_to_ids(token) != tokenizer.unk_token_id
            assert len(tokenizer.encode(token)) == 1


def test_chat_template_builds_the_prompt(saved_bpe):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "¿Qué tal? 🙂"},
    ]
    prompt = saved_bpe.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == (
        "<|system|>Be brief.<|end|><|user|>Hi there<|end|><|assistant|>Hello.<|end|>"
        "<|user|>¿Qué tal? 🙂<|end|><|assistant|>"
    )
    ids = saved_bpe.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    assert saved_bpe.decode(ids) == prompt
    with pytest.raises(Exception, match="chat roles are system, user and assistant"):
        saved_bpe.apply_chat_template([{"role": "robot", "content": "beep"}], tokenize=False)


def test_chat_template_reads_content_given_as_text_parts(saved_bpe):
    """OpenAI's API, TRL and Gradio give a message's content as a list of parts: the template concatenated the list
    with a string ("can only concatenate list"). Text parts read as their text; an image part is refused."""
    strings = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
               {"role": "assistant", "content": "Hello."}]
    parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"][:3]},
                                             {"type": "text", "text": m["content"][3:]}]} for m in strings]
    for generation_prompt in (False, True):
        assert saved_bpe.apply_chat_template(parts, add_generation_prompt=generation_prompt, tokenize=False) == \
            saved_bpe.apply_chat_template(strings, add_generation_prompt=generation_prompt, tokenize=False)
    marked = saved_bpe.apply_chat_template(parts, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert saved_bpe.decode([t for t, m in zip(marked["input_ids"], marked["assistant_masks"]) if m]) == \
        "Hello.<|end|>"
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "cat.png"}},
                                          {"type": "text", "text": "What is this?"}]}]
    with pytest.raises(Exception, match="pocketlm models read text, and a message holds a part of type image_url"):
        saved_bpe.apply_chat_template(image, tokenize=False)


def test_first_change_names_what_a_tokenizer_alters_and_not_a_character_outside_its_vocabulary(
        char_tokenizer, bpe_tokenizer):
    """What train.py's note and compare.py's mark rest on: a lowercasing tokenizer changes the text, at the first
    capital; pocketlm's byte-level BPE gives everything back; the character tokenizer's <unk> for a character it
    never saw stands for that one character, so it is not a change."""
    from tokenizers import normalizers

    from tokenization import first_change

    text = "plain words first, then Capitals ☃ and more\n"
    assert first_change(bpe_tokenizer, [text, "🙂 tab\there"]) is None
    unseen = next(c for c in "☃&#~^" if c not in char_tokenizer.get_vocab())
    assert first_change(char_tokenizer, [f"the {unseen} end"]) is None
    lowering = bpe_tokenizer.__class__(tokenizer_object=bpe_tokenizer.backend_tokenizer.__class__.from_str(
        bpe_tokenizer.backend_tokenizer.to_str()))
    lowering.backend_tokenizer.normalizer = normalizers.Lowercase()
    original, back = first_change(lowering, [text])
    assert original == text[text.index("Capitals") - 12:][:24] and back == original.lower()
    assert first_change(lowering, [text.lower()]) is None


def test_tokenizer_kind_tells_pocketlm_s_two_tokenizers_from_others(char_tokenizer, bpe_tokenizer):
    """The model card and the GGUF export read what a tokenizer is from this one place."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tokenization import tokenizer_kind

    assert tokenizer_kind(bpe_tokenizer) == "byte-level BPE" and tokenizer_kind(char_tokenizer) == "character-level"
    for model, trainer, kind in ((models.WordPiece(unk_token="[UNK]"), trainers.WordPieceTrainer, "WordPiece"),
                                 (models.Unigram(), trainers.UnigramTrainer, "Unigram"),
                                 (models.BPE(unk_token="[UNK]"), trainers.BpeTrainer, "BPE")):
        backend = Tokenizer(model)
        backend.pre_tokenizer = pre_tokenizers.Whitespace()
        backend.train_from_iterator([SAMPLE_TEXT], trainer(vocab_size=120, special_tokens=["[UNK]"]))
        assert tokenizer_kind(PreTrainedTokenizerFast(tokenizer_object=backend)) == kind


def test_a_saved_tokenizer_keeps_its_settings_and_not_how_it_was_read(saved_bpe, tmp_path):
    """Every tokenizer pocketlm writes (a run's, an export's, a Hub repository's) goes through save_tokenizer. One
    read with from_pretrained, as they all are, carries how it was read, which transformers 5 writes back: a
    published tokenizer_config.json said "local_files_only": true. It also names the class 4.x knows."""
    import json

    from tokenization import save_tokenizer

    assert saved_bpe.init_kwargs.get("is_local") is True  # what transformers hands the save
    save_tokenizer(saved_bpe, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert not {"is_local", "local_files_only"} & set(config)
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert config["additional_special_tokens"] == [END_OF_TURN, *ROLE_TOKENS.values()]
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(SAMPLE_TEXT).input_ids == saved_bpe(SAMPLE_TEXT).input_ids
    assert reloaded.pad_token == saved_bpe.pad_token and reloaded.chat_template == saved_bpe.chat_template
