"""transformers' own common model tests, run on both families as transformers runs them on its built-in models.

`ModelTesterMixin` comes from `tests/test_modeling_common.py` of the installed transformers release's source archive
on PyPI (fetched once with pip into pocketlm's cache; the archive is Apache-2.0 and nothing of it is copied into this
repository). The archive ships neither the generation tests nor the export tests that module imports; they are
stood in for by empty mixins, and tests/test_models.py exercises `generate()`'s output options through the public
API instead. Each test that is skipped or expected to differ says why, below.
"""

import os
import subprocess
import sys
import tarfile
import tempfile
import unittest
from pathlib import Path

import pytest
import torch
import transformers

from modeling import (GPTConfig, GPTForCausalLM, GPTForSequenceClassification, GPTModel, LSTMConfig, LSTMForCausalLM,
                      LSTMForSequenceClassification, LSTMModel)
from pocketlm.home import HOME as CACHE

PACKAGE = "transformers_common_tests"
STUBS = {  # modules test_modeling_common imports that the source archive does not carry
    "exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    "generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
}


def common_tests() -> Path | None:
    """A folder holding the `transformers_common_tests` package: the archive's common test modules and the stubs."""
    root = CACHE / f"transformers-{transformers.__version__}-tests"
    package = root / PACKAGE
    if (package / "test_modeling_common.py").is_file():
        return root
    with tempfile.TemporaryDirectory() as scratch:
        fetched = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                                  "--no-build-isolation", f"transformers=={transformers.__version__}", "-d", scratch],
                                 capture_output=True, text=True, timeout=600)
        archives = list(Path(scratch).glob("transformers-*.tar.gz"))
        if fetched.returncode != 0 or not archives:
            return None
        with tarfile.open(archives[0]) as archive:
            members = [m for m in archive.getmembers() if m.isfile() and "/tests/" in m.name
                       and m.name.count("/") == 2 and m.name.endswith(".py")]
            partial = Path(scratch) / PACKAGE
            partial.mkdir()
            for member in members:
                (partial / Path(member.name).name).write_bytes(archive.extractfile(member).read())
        (partial / "__init__.py").write_text("")
        for name, text in STUBS.items():
            (partial / name).parent.mkdir(exist_ok=True)
            (partial / name).parent.joinpath("__init__.py").touch()
            (partial / name).write_text(text)
        root.mkdir(parents=True, exist_ok=True)
        os.replace(partial, package)
    return root


ROOT = common_tests()
if ROOT is None:
    if os.environ.get("POCKETLM_REQUIRE_TRANSFORMERS_TESTS"):
        raise RuntimeError(f"could not fetch transformers=={transformers.__version__}'s source archive from PyPI")
    pytest.skip(f"transformers=={transformers.__version__}'s source archive (its common tests) could not be fetched "
                "from PyPI", allow_module_level=True)
pytest.importorskip("parameterized", reason="transformers' common tests need it: pip install -e '.[test]'")
sys.path.insert(0, str(ROOT))

from transformers.models.auto import modeling_auto  # noqa: E402
from transformers_common_tests.test_modeling_common import (  # noqa: E402
    ModelTesterMixin, ids_tensor, random_attention_mask)


@pytest.fixture(autouse=True, scope="module")
def listed_like_built_in_models():
    """The mixin tells a base model from a causal LM (which trains with labels) by looking a class's name up in
    transformers' own tables of built-in models; ours are registered with the Auto classes at run time instead, so
    they are listed there for these tests, as a built-in model is, and taken out again after."""
    tables = [(modeling_auto.MODEL_MAPPING_NAMES, "GPTModel", "LSTMModel"),
              (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "GPTForCausalLM", "LSTMForCausalLM"),
              (modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, "GPTForSequenceClassification",
               "LSTMForSequenceClassification")]
    for table, gpt, lstm in tables:
        table[GPTConfig.model_type], table[LSTMConfig.model_type] = gpt, lstm
    yield
    for table, _, _ in tables:
        del table[GPTConfig.model_type], table[LSTMConfig.model_type]


@pytest.fixture(autouse=True, scope="module")
def transformers_default_logging():
    """Some common tests read transformers' warnings (the classifiers' "Reinit due to size mismatch"); the command
    line tests before them in the same process quiet transformers to errors (cli._quiet_libraries), so the default
    level is set back for these and the earlier one restored after."""
    earlier = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    yield
    transformers.logging.set_verbosity(earlier)


class Tester:
    """What ModelTesterMixin asks of a model's tester: tiny shapes, a config, inputs."""

    batch_size, seq_length, is_training = 13, 7, True
    vocab_size, hidden_size, num_hidden_layers, num_attention_heads = 99, 32, 2, 4

    def __init__(self, parent, config_class):
        self.parent = parent
        self.config_class = config_class

    def get_config(self):
        if self.config_class is GPTConfig:
            return GPTConfig(vocab_size=self.vocab_size, block_size=512, n_layer=self.num_hidden_layers,
                             n_head=self.num_attention_heads, n_embd=self.hidden_size, dropout=0.0, pad_token_id=0,
                             eos_token_id=1, bos_token_id=1)
        # The embedding as wide as the LSTM: the mixin checks every hidden state against `hidden_size`, and the
        # first one is the embedding (`embedding_dim` wide, 128 against 256 units by default).
        return LSTMConfig(vocab_size=self.vocab_size, embedding_dim=self.hidden_size, hidden_size=self.hidden_size,
                          num_layers=self.num_hidden_layers, dropout=0.0, pad_token_id=0, eos_token_id=1,
                          bos_token_id=1)

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = random_attention_mask([self.batch_size, self.seq_length])
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


class CommonTest(ModelTesterMixin):
    pipeline_model_mapping = {}
    # Upstream runs this only for models added since 2023 (read from a copyright line ours have no need of) and a
    # few chosen older ones: every weight from_pretrained must create is one _init_weights initializes.
    test_can_init_all_missing_weights_before_2023 = True

    @unittest.skip("the source archive ships no generation tests: tests/test_models.py runs generate()'s output "
                   "options on both families instead")
    def test_generation_tester_mixin_inheritance(self):
        pass

    def _check_caches_are_equal(self, first, second):
        """What the generation tests' mixin provides upstream: every layer's keys and values, or recurrent states,
        equal (a recurrent cache has no sequence length to compare)."""
        self.assertEqual(len(first.layers), len(second.layers))
        for ours, theirs in zip(first.layers, second.layers):
            for name in ("keys", "values"):
                if getattr(ours, name, None) is not None:
                    torch.testing.assert_close(getattr(ours, name), getattr(theirs, name))
            for slot, state in getattr(ours, "recurrent_states", {}).items():
                self.assertIsNotNone(state)
                torch.testing.assert_close(state, theirs.recurrent_states[slot])


class GPTCommonTest(CommonTest, unittest.TestCase):
    all_model_classes = (GPTModel, GPTForCausalLM, GPTForSequenceClassification)

    def setUp(self):
        self.model_tester = Tester(self, GPTConfig)


class LSTMCommonTest(CommonTest, unittest.TestCase):
    all_model_classes = (LSTMModel, LSTMForCausalLM, LSTMForSequenceClassification)
    has_attentions = False  # an LSTM has no attention to return, as Mamba has none

    def setUp(self):
        self.model_tester = Tester(self, LSTMConfig)
