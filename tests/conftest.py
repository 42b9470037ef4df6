"""Shared fixtures: tiny random models and tokenizers built in code, offline."""

import os
import sys

# Tests never reach the Hub (CI sets these too; setting them here keeps a bare `pytest` offline as well).
for _switch in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_switch, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import huggingface_hub  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
# The recipes import their sibling modules plainly (`from demo_data import ...`), as a script's own folder is on
# sys.path when it runs; tests that import a recipe by its path put recipes/ there once, here. Appended: it never
# shadows an installed package.
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
if str(RECIPES) not in sys.path:
    sys.path.append(str(RECIPES))

WORDS = (
    "a an the man woman child dog cat is are was playing plays eating eats running runs sleeping guitar piano "
    "food bread park street house sun rain weather lovely bad good today tomorrow street car bike music song "
    "red blue green big small happy sad fast slow question answer what who where when why how bank card money "
    "transfer account balance help please thanks hello world sentence text embedding model of in on at with"
).split()


def build_tokenizer(directory):
    """A WordPiece BERT tokenizer over a small English vocabulary, written to `directory`."""
    from transformers import BertTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", ",", "?", "!", "'"]
    vocab += sorted(set(WORDS))
    vocab += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    vocab = list(dict.fromkeys(vocab))  # "a" is a word and a letter: one id each token
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # `vocab=` (a dict): transformers 5 ignores `vocab_file=` here and would map every word to [UNK].
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)


def load_module(path):
    """Import a script (a recipe or a benchmark) by its file path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_bert_config(hidden_size=32, vocab_size=128):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
    )


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture
def make_model(tiny_tokenizer):
    """Factory: a tiny random MatryoshkaModel (with tokenizer) over a 32-d BERT."""
    from mrl_text import MatryoshkaConfig, MatryoshkaModel

    def factory(matryoshka_dimensions=(32, 16, 8, 4), seed=0, **config_kwargs):
        torch.manual_seed(seed)
        config = MatryoshkaConfig(
            encoder=tiny_bert_config(vocab_size=len(tiny_tokenizer)),
            matryoshka_dimensions=list(matryoshka_dimensions),
            **config_kwargs,
        )
        model = MatryoshkaModel(config).eval()
        model.tokenizer = tiny_tokenizer
        return model

    return factory


@pytest.fixture
def sentences():
    return [
        "A man is playing a guitar.",
        "A woman is eating bread in the park.",
        "The weather is lovely today.",
        "What is my account balance?",
        "the dog runs",
    ]


# A fresh Python in which `import mrl_text` fails: proves that a saved folder works for users who never installed
# mrl-text (trust_remote_code).
HIDE_MRL_TEXT = """
import sys, builtins
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name == "mrl_text" or name.startswith("mrl_text."):
        raise ImportError("mrl_text is hidden in this test")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
sys.path = [p for p in sys.path if p not in ("", ".")]
"""


def run_without_mrl_text(script, cwd, env=None):
    """Run `script` (its last line prints REMOTE-OK) in a subprocess where mrl_text cannot be imported, with no
    terminal (stdin closed, as in scripts and notebooks): nothing may ask a question there."""
    import subprocess
    import sys
    import textwrap

    env = {**os.environ, "PYTHONPATH": "", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", HIDE_MRL_TEXT + textwrap.dedent(script)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE-OK" in result.stdout
    # transformers prints its trust_remote_code question even when no one can answer it
    assert "Do you wish to run the custom code" not in result.stdout + result.stderr


def launch_two_cpu_processes(script, output, port):
    """`accelerate launch` `script output` as two CPU processes over gloo (`--multi_gpu` with ACCELERATE_USE_CPU: the
    `--cpu --num_processes 2` form silently runs one), one torch thread each; fails the test with the processes'
    output if they fail."""
    import subprocess

    repository = str(Path(script).parents[1])
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONPATH": repository}
    command = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
               str(script), str(output)]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


# The revision every intercepted upload reports (and the hub cache the tests lay out uses).
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def captured_commit(monkeypatch):
    """The Hub, intercepted at `HfApi.create_repo` and `HfApi.upload_folder`: each upload is recorded as one commit."""
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = repo_id
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, **kwargs):
        folder = Path(folder_path)
        calls.setdefault("commits", []).append(
            {
                "repo_id": repo_id,
                "message": commit_message,
                # read now: push_to_hub uploads from a temporary folder that is gone after it returns
                "files": {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()},
            }
        )
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/{REVISION}", oid=REVISION)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls
