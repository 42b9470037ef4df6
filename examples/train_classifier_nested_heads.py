"""Train a text classifier with nested heads: one prediction per embedding size, from one model.

`MatryoshkaForSequenceClassification` puts a linear head on every prefix of the pooled embedding (16 dims, 32, ...,
the full size), all trained at once with the Matryoshka cross-entropy (the sum of every head's loss). At inference
you choose the size: `model(**inputs, dim=32).logits`, or set `config.truncate_dim` for a default.

    python examples/train_classifier_nested_heads.py           # offline: chatterbot-corpus questions -> their topic
    python examples/train_classifier_nested_heads.py --data train.csv --test-data test.csv --text-column sentence
    python examples/train_classifier_nested_heads.py --data SetFit/emotion --test-data SetFit/emotion --efficient-heads

Your data: a .tsv/.csv/.jsonl/.parquet table (or a Hub dataset) with a text column and a label column (class names,
or ids 0..n-1). Without --test-data, --test-fraction of the rows are held out.
"""

import argparse
from collections import Counter

import torch
from offline_defaults import chatterbot_pairs, default_model  # examples/offline_defaults.py

from mrl_text import MatryoshkaForSequenceClassification, MatryoshkaModel
from mrl_text.data import load_labelled_text
from mrl_text.training import MatryoshkaTrainer, MatryoshkaTrainingArguments, classification_compute_metrics


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="encoder to start from, Hub id or folder (default: all-MiniLM-L6-v2, offline)")
    parser.add_argument("--data", help="training table or Hub dataset id (default: chatterbot-corpus topics)")
    parser.add_argument("--split", default="train", help="Hub split of --data (default: %(default)s)")
    parser.add_argument("--test-data", help="test table or Hub dataset id (default: hold out --test-fraction)")
    parser.add_argument("--test-split", default="test", help="Hub split of --test-data (default: %(default)s)")
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--label-column", default="label")
    parser.add_argument("--max-rows", type=int, help="use the first N training rows")
    parser.add_argument("--dims", type=int, nargs="+", help="nested sizes, largest first (default: the full size and "
                        "each power of two below it down to 16)")
    parser.add_argument("--efficient-heads", action="store_true", help="MRL-E: one weight-tied head for all sizes")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (default: the epochs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="the encoder's (the heads learn faster)")
    parser.add_argument("--max-seq-length", type=int, default=128, help="tokens per text")
    parser.add_argument("--output-dir", default="outputs/matryoshka-classifier")
    return parser.parse_args(argv)


def load_data(args):
    """(train, test) datasets with columns text and label (class ids, numbered alike in both)."""
    if args.data is None:  # questions labelled with their topic; topics with few questions are left out
        rows = chatterbot_pairs()
        counts = Counter(rows["topic"])
        rows = rows.filter(lambda row: counts[row["topic"]] >= 20)
        data = load_labelled_text(rows, text="anchor", label="topic")
    else:
        data = load_labelled_text(args.data, args.text_column, args.label_column, split=args.split)
    data = data.select(range(min(args.max_rows or len(data), len(data))))
    if args.test_data is None:
        split = data.train_test_split(test_size=args.test_fraction, seed=0)
        return split["train"], split["test"]
    test = load_labelled_text(args.test_data, args.text_column, args.label_column, split=args.test_split)
    if hasattr(data.features["label"], "names"):  # class names are numbered per file: use the training numbering
        names, test_names = data.features["label"].names, test.features["label"].names
        unknown = sorted(set(test_names) - set(names))
        if unknown:
            raise SystemExit(f"--test-data has labels the training data lacks: {unknown}.")
        test = test.map(lambda row: {"label": names.index(test_names[row["label"]])}, features=data.features)
    return data, test


def main(argv=None):
    args = parse_args(argv)

    # 1. The data: text and label columns, class names kept for the model's config.
    train, test = load_data(args)
    feature = train.features["label"]
    names = feature.names if hasattr(feature, "names") else [str(i) for i in range(max(train["label"]) + 1)]
    print(f"{len(train)} training and {len(test)} test rows, {len(names)} classes")

    # 2. The model: an encoder wrapped as a Matryoshka model, with a classification head at every size.
    model_name = args.model or default_model()[0]
    encoder = MatryoshkaModel.from_encoder(model_name, matryoshka_dimensions=args.dims)
    config = encoder.config
    config.id2label, config.label2id = dict(enumerate(names)), {name: i for i, name in enumerate(names)}
    config.efficient_heads = config.scale_head_inputs = args.efficient_heads  # MRL-E trains best with scaled inputs
    model = MatryoshkaForSequenceClassification(config, encoder=encoder.encoder)
    model.tokenizer = encoder.tokenizer
    dims = config.matryoshka_dimensions

    # 3. Train on the Matryoshka cross-entropy (the trainer's default for this model); score every head's accuracy.
    training_args = MatryoshkaTrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=0.1,  # a fraction of the steps
        max_seq_length=args.max_seq_length,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
    )
    trainer = MatryoshkaTrainer(model=model, args=training_args, train_dataset=train, eval_dataset=test,
                                compute_metrics=classification_compute_metrics(dims))
    trainer.train()
    metrics = trainer.evaluate()

    majority = max(test["label"].count(label) for label in set(test["label"])) / len(test)
    print(f"\nTest accuracy of every head ({len(test)} rows; always answering the most common class: "
          f"{100 * majority:.2f}):")
    print(f"{'size':>6} {'accuracy':>9}")
    for dim in dims:
        print(f"{dim:>6} {100 * metrics[f'eval_classification_accuracy_{dim}']:>9.2f}")

    # 4. Save, and predict with the smallest head.
    trainer.save_model(args.output_dir)
    texts = test["text"][:3]
    inputs = model.tokenizer(texts, padding=True, truncation=True, max_length=args.max_seq_length,
                             return_tensors="pt").to(model.device)
    with torch.inference_mode():
        predictions = model.eval()(**inputs, dim=dims[-1]).logits.argmax(-1).tolist()
    for text, label in zip(texts, predictions):
        print(f"{dims[-1]}-d head: {text!r} -> {config.id2label[label]}")
    print(f"\nSaved to {args.output_dir}: `import mrl_text; AutoModelForSequenceClassification.from_pretrained("
          f"{args.output_dir!r})`")


if __name__ == "__main__":
    main()
