"""Quality where Matryoshka training matters: the paper's comparisons on text, one subcommand per regime.

From all-MiniLM-L6-v2 (`--model`), on the shared data folder (`--data`); each regime lives in its own module:

- `classification`, `adaptive` (quality_classification.py): fine-tuning on Banking77, TREC and emotion, MRL / MRL-E /
  FF-d / plain / the plain model's PCA (SVD) baseline, own heads and probes at every size; the MRL classifier's heads
  as an `AdaptiveClassifier` cascade.
- `retrieval` (quality_retrieval.py): SciFact's training queries -> SciFact test nDCG@10; plain, MRL (the recipe
  `retrieval-val` chose), MRL with the paper's recipe, sentence-transformers' MatryoshkaLoss, FF-64, FF-32.
- `retrieval-val` (quality_retrieval_validation.py): MRL loss variants against plain on a validation split of SciFact
  train, the bottom encoder layers frozen (`MatryoshkaModel.freeze_layers`).
- `finished` (quality_finished.py): trained rows next to post-hoc maps (truncation, PCA, the Matryoshka adaptor) of
  the finished model; STS-B, SciFact and a Banking77 probe. Also writes quality_adaptor.json/.md.
- `mlm` (quality_mlm.py): a small BERT pretrained from scratch with masked language modelling, MRL vs FF-d vs plain.

Every model trains with `MatryoshkaTrainer` (heads and projections at `--head-lr`), features come from `encode`, scores
from `mrl_text.evaluation`; seeds 0..N-1 (`--seeds`), mean and spread over seeds. Results:
`<--results>/quality_<regime>.json` and `.md`, headed by the command and the machine (`_report`); any subsampling is
stated there. Model choices were made on a validation split held out from the training set, never on test.

    python benchmarks/quality.py classification --limit-train 2000 --limit-eval 500      # CPU, subsampled
    python benchmarks/quality.py retrieval --device cuda --bf16 --seeds 3 --workers 6    # a GPU
    python benchmarks/quality.py finished --methods truncation,pca,adaptor,adaptor_supervised \\
        --reuse-runs benchmarks/results/quality_finished_h200.json                         # CPU: post-hoc rows only
"""

import argparse
import sys

import _quality_common as common
import quality_classification
import quality_finished
import quality_mlm
import quality_retrieval
import quality_retrieval_validation

MODULES = (quality_classification, quality_retrieval, quality_finished, quality_retrieval_validation, quality_mlm)
REGIMES = {regime: module for module in MODULES for regime in module.REGIMES}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="regime", required=True)
    for module in MODULES:
        module.add_parsers(commands)
    args = common.finish_arguments(parser.parse_args(argv))
    for option in ("full_size_only_fraction", "smaller_sizes_warmup_fraction", "finetune_warmup_fraction"):
        if not 0.0 <= getattr(args, option, 0.0) <= 1.0:
            raise SystemExit(f"--{option.replace('_', '-')} {getattr(args, option)} must be a share of the steps "
                             "between 0 and 1.")
    check = getattr(REGIMES[args.regime], "check_arguments", None)
    if check is not None:
        check(args)
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    return REGIMES[args.regime].run(args, argv)


if __name__ == "__main__":
    main()
