"""Train a Matryoshka embedding model on your own (anchor, positive) pairs.

The Matryoshka loss applies InfoNCE (in-batch negatives) to every prefix of the embedding (e.g. 384, 256, ..., 16
dims) from one encoder pass, so each prefix becomes an embedding of its own. Held-out pairs are scored as retrieval
(each anchor must find its positive among all the positives) at every size, before and after training.

    python examples/train_matryoshka_pairs.py                   # offline: chatterbot-corpus questions and answers
    python examples/train_matryoshka_pairs.py --data my_pairs.tsv --output-dir outputs/my-model
    python examples/train_matryoshka_pairs.py --model bert-base-uncased \
        --data sentence-transformers/natural-questions --anchor-column query --positive-column answer \
        --push-to-hub my-name/bert-nq-matryoshka

Your file: .tsv, .csv, .jsonl or .parquet with an anchor and a positive column (name them with --anchor-column and
--positive-column). Load the result with `import mrl_text; AutoModel.from_pretrained(output_dir)` and
`model.encode(texts, dim=64)`.
"""

import argparse

from offline_defaults import chatterbot_pairs, default_model  # examples/offline_defaults.py

from mrl_text import MatryoshkaModel
from mrl_text.data import load_pairs
from mrl_text.evaluation import RetrievalEvaluator
from mrl_text.losses import InfoNCELoss, MatryoshkaLoss
from mrl_text.training import MatryoshkaTrainer, MatryoshkaTrainingArguments


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="encoder to start from, Hub id or folder (default: all-MiniLM-L6-v2, offline)")
    parser.add_argument("--data", help="a pairs file or a Hub dataset id (default: chatterbot-corpus's pairs)")
    parser.add_argument("--anchor-column", default="anchor")
    parser.add_argument("--positive-column", default="positive")
    parser.add_argument("--split", default="train", help="Hub dataset split (default: %(default)s)")
    parser.add_argument("--subset", help="Hub dataset configuration")
    parser.add_argument("--max-rows", type=int, help="use the first N pairs")
    parser.add_argument("--heldout-fraction", type=float, default=0.2, help="pairs kept for evaluation")
    parser.add_argument("--dims", type=int, nargs="+", help="nested sizes, largest first (default: the full size and "
                        "each power of two below it down to 16)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after N steps (default: the epochs)")
    parser.add_argument("--batch-size", type=int, default=32, help="more in-batch negatives train better")
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--max-seq-length", type=int, default=128, help="tokens per text")
    parser.add_argument("--output-dir", default="outputs/matryoshka-pairs")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the trained model (after `hf auth login`)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    # 1. The model: any BERT-family encoder, wrapped so that its pooled embedding is trained at every size.
    model_name, base_model = (args.model, args.model) if args.model else default_model()
    model = MatryoshkaModel.from_encoder(model_name, matryoshka_dimensions=args.dims)
    print(f"Sizes {model.config.matryoshka_dimensions} of {model_name}")

    # 2. The data: (anchor, positive) columns, from your file or the Hub, or the offline default.
    if args.data:
        pairs = load_pairs(args.data, args.anchor_column, args.positive_column, split=args.split,
                           subset=args.subset, limit=args.max_rows)
    else:
        pairs = chatterbot_pairs().select_columns(["anchor", "positive"])
        pairs = pairs.select(range(min(args.max_rows or len(pairs), len(pairs))))
    split = pairs.train_test_split(test_size=args.heldout_fraction, seed=0)
    train, held_out = split["train"], split["test"]

    # 3. The evaluator: every held-out anchor searches all the positives (training ones included) for its own.
    positives = list(dict.fromkeys(pairs["positive"]))
    corpus = {f"doc{i}": text for i, text in enumerate(positives)}
    doc_ids = {text: doc for doc, text in corpus.items()}
    queries = {f"q{i}": text for i, text in enumerate(held_out["anchor"])}
    qrels = {f"q{i}": {doc_ids[text]: 1} for i, text in enumerate(held_out["positive"])}
    evaluator = RetrievalEvaluator(corpus, queries, qrels, name="heldout")

    # 4. The loss: InfoNCE at every size of the model's config, one encoder pass per step.
    loss = MatryoshkaLoss.from_config(model.config, InfoNCELoss(scale=20.0))

    # 5. Train, evaluating every size before and after.
    training_args = MatryoshkaTrainingArguments(
        output_dir=args.output_dir,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=0.1,  # a fraction of the steps
        max_seq_length=args.max_seq_length,
        logging_steps=10,
        save_strategy="no",  # one final save below; set "steps" to keep checkpoints of a long run
        report_to="none",
    )
    trainer = MatryoshkaTrainer(model=model, args=training_args, train_dataset=train, loss=loss,
                                evaluators=[evaluator])
    model.model_card_data.base_model = base_model  # what only this script knows; the trainer fills in the rest
    before = trainer.evaluate()  # the card keeps it as the "before" curve
    trainer.train()
    after = trainer.evaluate()

    print(f"\nHeld-out retrieval ({len(held_out)} anchors among {len(corpus)} positives), nDCG@10 at every size:")
    print(f"{'size':>6} {'before':>8} {'after':>8}")
    for dim in model.config.matryoshka_dimensions:
        key = f"eval_heldout_ndcg_at_10_{dim}"
        print(f"{dim:>6} {100 * before[key]:>8.2f} {100 * after[key]:>8.2f}")

    # 6. Save the model with its card (README.md: sizes, results, training details), and optionally upload it.
    trainer.save_model(args.output_dir)
    print(f"\nSaved to {args.output_dir}: `import mrl_text; AutoModel.from_pretrained({args.output_dir!r})`")
    if args.push_to_hub:
        model.push_to_hub(args.push_to_hub)
        print(f"Uploaded to https://huggingface.co/{args.push_to_hub}")


if __name__ == "__main__":
    main()
