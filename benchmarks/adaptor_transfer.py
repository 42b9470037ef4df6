"""The adaptor on data its fit never saw: fit on one corpus, score on another, at every size.

A user fits the adaptor on their own texts (the documents they index) and then embeds other text with it. This
suite fits `mrl_text.adaptor.fit` (unsupervised, the library's defaults) on one corpus and scores tasks built from
another, side by side with plain truncation:

- fit on short general-domain sentences (SNLI dev + MRPC test, deduplicated), score STS-B test (Spearman x100) and a
  retrieval task built from STS-B test (each pair scored >= 4: sentence 1 is a query, sentence 2 its relevant
  document, among every STS-B test sentence 2 and the sentence 1 of the pairs scored < 4; nDCG@10 x100);
- fit on SciFact abstracts (title + text, the first `--scifact-docs`), score the same STS-B tasks.

Rows per fit: plain truncation; the default (`rotation="auto"`: the candidates fit on one split, the one that
validates best kept at each size); each candidate alone as `fit(rotation=...)` would return it (gated); and each
candidate without the gate (every size adapted: what the gate protects from). Embeddings are computed once (all-MiniLM-
L6-v2, cached under outputs/embedding_cache or `--cache-dir`).

    python benchmarks/adaptor_transfer.py                      # ~16k sentences + 2,500 abstracts, 30 epochs
    python benchmarks/adaptor_transfer.py --epochs 2 --limit 2000 --scifact-docs 300   # a quick look
"""

import argparse
import copy
import csv
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from mrl_text.adaptor import fitting
from mrl_text.adaptor.metrics import retrieval_ndcg
from mrl_text.models.modeling_matryoshka import truncate_embeddings

# _report before the other siblings: it puts recipes/ on sys.path
from _report import command_line, header, machine, write_results
from embedding_cache import REPO, cached_embeddings, load_model

DATA = REPO.parent / "shared" / "data"
DIMS = [384, 256, 128, 64, 32, 16]
RELEVANT_SCORE = 4.0
HIDDEN_SIZE = 512  # fit's default


def read_tsv(path, columns):
    with open(path, encoding="utf-8", newline="") as f:  # standard quoting: some fields hold quotes or tabs
        return [[row[c] for c in columns] for row in csv.DictReader(f, delimiter="\t")]


def distinct(texts):
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def fit_corpora(scifact_docs, limit):
    sentences = distinct(
        [s for a, b in read_tsv(DATA / "snli" / "dev.tsv", ["premise", "hypothesis"]) for s in (a, b)]
        + [s for a, b in read_tsv(DATA / "mrpc" / "test.tsv", ["sentence1", "sentence2"]) for s in (a, b)]
    )
    with open(DATA / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
        abstracts = [json.loads(line) for line in f][:scifact_docs]
    abstracts = distinct(f"{d['title']} {d['text']}" for d in abstracts)
    def sample(texts):  # a seeded sample keeps both sources in a limited sentence corpus
        return random.Random(0).sample(texts, limit) if limit and limit < len(texts) else texts

    return {"snli+mrpc sentences": (sample(sentences), 64), "scifact abstracts": (sample(abstracts), 128)}


def sts_tasks():
    """STS-B test pairs (Spearman) and the retrieval task built from its pairs scored >= 4."""
    pairs = [(a.strip(), b.strip(), float(s))
             for a, b, s in read_tsv(DATA / "stsb" / "test.tsv", ["sentence1", "sentence2", "score"])]
    queries = distinct(a for a, _, s in pairs if s >= RELEVANT_SCORE)
    documents = distinct([b for _, b, _ in pairs] + [a for a, _, s in pairs if s < RELEVANT_SCORE])
    doc_row = {d: i for i, d in enumerate(documents)}
    relevant = {q: set() for q in queries}
    for a, b, s in pairs:
        if s >= RELEVANT_SCORE:
            relevant[a].add(doc_row[b])
    return pairs, queries, documents, [relevant[q] for q in queries]


IN_DOMAIN = "in-domain "  # prefix of a task on the fit corpus's own domain (not one of the held-out targets)


class InDomainRetrieval:
    """SciFact test claims searched among the fit's own abstracts (nDCG@10 x100): the situation the suite measures
    (fit on the corpus you index, query it with in-domain text), scored from the same fits as the held-out tasks.
    Only the claims with a relevant abstract among the fit's abstracts count."""

    name = IN_DOMAIN + "scifact_ndcg@10"

    def __init__(self, embed, abstracts, documents):
        from mrl_text.data import load_beir

        with open(DATA / "scifact" / "corpus.jsonl", encoding="utf-8") as f:
            text_of = {d["_id"]: f"{d['title']} {d['text']}".strip() for d in map(json.loads, f)}
        row = {text: i for i, text in enumerate(abstracts)}
        _, queries, qrels = load_beir(DATA / "scifact", "test")
        relevant = {q: {row[text_of[d]] for d, r in docs.items() if r > 0 and text_of[d] in row}
                    for q, docs in qrels.items()}
        kept = [q for q in qrels if relevant[q]]
        self.queries, self.documents = embed([queries[q] for q in kept]), documents
        self.relevant = [relevant[q] for q in kept]
        print(f"in-domain SciFact: {len(kept)} test claims with a relevant abstract among the {len(abstracts)} fit on")

    def __call__(self, sized):
        return {self.name: round(100 * retrieval_ndcg(sized(self.queries), sized(self.documents), self.relevant,
                                                      None), 2)}


class Scorer:
    """Scores full-size embeddings mapped by `at_size(embeddings, dim)` on the STS-B tasks, at every size."""

    def __init__(self, embed):
        self.pairs, queries, documents, self.relevant = sts_tasks()
        self.first = embed([a for a, _, _ in self.pairs])
        self.second = embed([b for _, b, _ in self.pairs])
        self.queries, self.documents = embed(queries), embed(documents)
        self.gold = [s for _, _, s in self.pairs]
        print(f"STS-B test: {len(self.pairs)} pairs; retrieval: {len(queries)} queries, {len(documents)} documents")

    def __call__(self, at_size, dim, in_domain=None):
        def sized(x):
            with torch.no_grad():
                return truncate_embeddings(at_size(x, dim), dim, True)

        a, b = sized(self.first), sized(self.second)
        sts = 100 * spearmanr((a * b).sum(-1).numpy(), self.gold).correlation
        ndcg = 100 * retrieval_ndcg(sized(self.queries), sized(self.documents), self.relevant, None)
        return {"stsb_spearman": round(float(sts), 2), "stsb_retrieval_ndcg@10": round(float(ndcg), 2),
                **(in_domain(sized) if in_domain else {})}


def choose_by_order(fits):
    """The alternative choice studied against the default: among the candidates passing the gate, the largest gain in
    the held-out closest pairs' Spearman alone (not summed with the recall gain); ties within the tolerance go to the
    candidate with the best mean of that gain."""
    gains = {name: {d: m["correlation"][0] - m["correlation"][1] if fitting.beats_truncation(m) else 0.0
                    for d, m in f["scores"].items()} for name, f in fits.items()}
    overall = max(gains, key=lambda name: np.mean(list(gains[name].values())))
    chosen = {}
    for d in DIMS:
        passing = {name: g[d] for name, g in gains.items() if fitting.beats_truncation(fits[name]["scores"][d])}
        if passing:
            best = max(passing, key=passing.get)
            chosen[d] = overall if passing.get(overall, -1) >= passing[best] - fitting.CHOICE_TOLERANCE else best
    return chosen


def methods(fits):
    """{row name: at_size function}: truncation, the default per-size choice, each candidate gated and ungated."""
    rows = {"truncation": lambda x, dim: x}
    default = fitting.combine(dict(fits), fitting.choose_per_size(fits), HIDDEN_SIZE)
    rows["default (auto, chosen per size)"] = default.at_size
    by_order = fitting.combine(copy.deepcopy(dict(fits)), choose_by_order(fits), HIDDEN_SIZE)
    rows["alternative: chosen by closest-pair order"] = by_order.at_size
    for name, fit in fits.items():
        alone = {name: {**fit, "adaptor": copy.deepcopy(fit["adaptor"])}}
        gated = fitting.combine(alone, fitting.choose_per_size(alone), HIDDEN_SIZE)
        rows[f"{name} alone"] = gated.at_size
        rows[f"{name} alone, no gate"] = lambda x, dim, ad=fit["adaptor"]: ad.adapt(x)
    return rows, default




def fitted_candidates(fit_name, corpus, options, seed, fits_dir):
    """`fitting.fit_candidates` on `corpus`, or its saved result from `fits_dir` (the same corpus, epochs and seed):
    a change of the choice rule re-scores saved fits without fitting again. Returns (fits, held-out rows, seconds)."""
    saved = None
    if fits_dir:
        key = f"{fit_name}-{len(corpus)}-e{options['epochs']}-s{seed}".replace(" ", "_").replace("+", "_")
        saved = Path(fits_dir) / f"{key}.pt"
        if saved.is_file():
            stored = torch.load(saved, weights_only=False)  # our own file, written below
            print(f"reusing the candidates fit in {saved}")
            return stored["fits"], stored["validation_rows"], stored["seconds"]
    began = time.time()
    fits, data = fitting.fit_candidates(torch.as_tensor(corpus), DIMS, None, "unsupervised", None, "auto",
                                        HIDDEN_SIZE, 1, 0.1, seed, True, options)
    seconds = time.time() - began
    if saved:
        saved.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"fits": fits, "validation_rows": len(data.val_rows), "seconds": seconds}, saved)
    return fits, len(data.val_rows), seconds


def run_pair(fit_name, corpus, scorer, options, seed, fits_dir=None, in_domain=None):
    fits, validation_rows, seconds = fitted_candidates(fit_name, corpus, options, seed, fits_dir)
    rows, default = methods(fits)
    scores = {row: {str(d): scorer(at_size, d, in_domain) for d in DIMS} for row, at_size in rows.items()}
    validation = {name: {str(d): {m: [round(v, 4) for v in values] for m, values in f["scores"][d].items()}
                         for d in DIMS} for name, f in fits.items()}
    return {"fit_on": fit_name, "fit_rows": len(corpus), "validation_rows": validation_rows,
            "fit_seconds": round(seconds), "chosen": {str(d): name_at(default, d) for d in DIMS},
            "validation": validation, "scores": scores}


def name_at(adaptor, dim):
    """The candidate `adaptor` applies at `dim`, or None (plain truncation)."""
    if adaptor.map_at(dim) is None:
        return None
    if adaptor.config.candidates:
        return adaptor.config.chosen.get(str(dim))
    return fitting.candidate_name(adaptor.config.rotation, adaptor.config.num_layers)


def targets(result):
    """The issue's checks per fit: default within 0.2 of the best candidate alone and never 0.2 below truncation on
    any task at any size; the largest gain at 16 over truncation."""
    checks = {}
    scores = result["scores"]
    for task in [t for t in next(iter(scores.values()))["384"] if not t.startswith(IN_DOMAIN)]:
        worst_vs_best, worst_vs_trunc = 0.0, 0.0
        for d in map(str, DIMS):
            best = max(scores[f"{n} alone"][d][task] for n in result["validation"])
            worst_vs_best = min(worst_vs_best, scores["default (auto, chosen per size)"][d][task] - best)
            worst_vs_trunc = min(worst_vs_trunc,
                                 scores["default (auto, chosen per size)"][d][task] - scores["truncation"][d][task])
        checks[task] = {"default_minus_best_candidate_worst": round(worst_vs_best, 2),
                        "default_minus_truncation_worst": round(worst_vs_trunc, 2),
                        "gain_at_16": round(scores["default (auto, chosen per size)"]["16"][task]
                                            - scores["truncation"]["16"][task], 2)}
    return checks


def markdown(report):
    """The results page's lines."""
    lines = header("The adaptor on a held-out domain: fit on one corpus, score on another", report)
    for result in report["results"]:
        lines += [f"## Fit on {result['fit_on']} ({result['fit_rows']:,} texts, {result['validation_rows']:,} held "
                  f"out for the gate; {result['fit_seconds']} s)", "",
                  "Kept per size by the default: " + ", ".join(f"{d}: {n or 'truncation'}"
                                                              for d, n in result["chosen"].items()), ""]
        for task in next(iter(result["scores"].values()))["384"]:
            lines += [f"### {task} (x100)", "", "| | " + " | ".join(map(str, DIMS)) + " |",
                      "|---" * (len(DIMS) + 1) + "|"]
            for row, by_dim in result["scores"].items():
                lines.append(f"| {row} | " + " | ".join(f"{by_dim[str(d)][task]:.2f}" for d in DIMS) + " |")
            lines.append("")
        lines += ["Targets (x100): " + "; ".join(f"{task}: default - best candidate alone, worst size "
                                                 f"{c['default_minus_best_candidate_worst']:+.2f}; default - "
                                                 f"truncation, worst size {c['default_minus_truncation_worst']:+.2f}; "
                                                 f"gain at 16 {c['gain_at_16']:+.2f}"
                                                 for task, c in result["targets"].items()), "",
                  "Validation (held-out rows of the fit corpus; adaptor / truncation): "
                  + "; ".join(f"{name} at 16: recall {v['16']['recall'][0]:.4f} / {v['16']['recall'][1]:.4f}, "
                              f"correlation {v['16']['correlation'][0]:.4f} / {v['16']['correlation'][1]:.4f}"
                              for name, v in result["validation"].items()), ""]
    return lines


def summary(results_now, results_before):
    """Per seed, fit and held-out task: truncation, the default now and before, the best candidate alone and the MLP
    alone at every size, and the targets' arithmetic for both defaults (from the per-seed reports)."""
    rows = []
    for now, before in zip(results_now, results_before):
        seed = now["options"]["seed"]
        for result, old in zip(now["results"], before["results"]):
            for task in next(iter(result["scores"].values()))["384"]:
                def at(row, d, r=result, task=task):
                    return r["scores"][row][str(d)][task]

                best = {d: max(result["validation"], key=lambda n, d=d: at(f"{n} alone", d)) for d in DIMS}
                rows.append({
                    "seed": seed, "fit_on": result["fit_on"], "task": task,
                    "truncation": [at("truncation", d) for d in DIMS],
                    "default": [at("default (auto, chosen per size)", d) for d in DIMS],
                    "kept": [result["chosen"][str(d)] for d in DIMS],
                    "default_before": [at("default (auto, chosen per size)", d, old) for d in DIMS],
                    "kept_before": [old["chosen"][str(d)] for d in DIMS],
                    "best_candidate": [at(f"{best[d]} alone", d) for d in DIMS],
                    "best_candidate_name": [best[d] for d in DIMS],
                    "mlp_alone": [at("mlp alone", d) for d in DIMS],
                    "targets": None if task.startswith(IN_DOMAIN) else result["targets"][task],
                    "targets_before": None if task.startswith(IN_DOMAIN) else old["targets"][task],
                })
    return rows


def summary_markdown(report):
    def cells(values):
        return " | ".join(f"{v:.2f}" for v in values)

    def kept(names):
        return "".join(n[0].upper() if n else "t" for n in names)

    lines = header("The adaptor on a held-out domain, over seeds: the default now and before", report)
    for fit_on in dict.fromkeys(r["fit_on"] for r in report["rows"]):
        for task in dict.fromkeys(r["task"] for r in report["rows"] if r["fit_on"] == fit_on):
            lines += [f"## Fit on {fit_on}; {task} (x100)", "",
                      "| seed | row | " + " | ".join(map(str, DIMS)) + " | kept |", "|---" * (len(DIMS) + 3) + "|"]
            for r in [r for r in report["rows"] if r["fit_on"] == fit_on and r["task"] == task]:
                s = r["seed"]
                lines += [f"| {s} | truncation | {cells(r['truncation'])} | |",
                          f"| {s} | default now | {cells(r['default'])} | {kept(r['kept'])} |",
                          f"| {s} | default before | {cells(r['default_before'])} | {kept(r['kept_before'])} |",
                          f"| {s} | best candidate alone | {cells(r['best_candidate'])} | "
                          f"{kept(r['best_candidate_name'])} |",
                          f"| {s} | mlp alone | {cells(r['mlp_alone'])} | |"]
            lines.append("")
    lines += ["## Targets (x100): worst size over the six", "",
              "| fit | task | seed | default - best candidate alone (now / before) | default - truncation (now / "
              "before) | gain at 16 (now / before) |", "|---|---|---|---|---|---|"]
    for r in [r for r in report["rows"] if r["targets"]]:
        t, b = r["targets"], r["targets_before"]
        lines.append(f"| {r['fit_on']} | {r['task']} | {r['seed']} | {t['default_minus_best_candidate_worst']:+.2f} / "
                     f"{b['default_minus_best_candidate_worst']:+.2f} | {t['default_minus_truncation_worst']:+.2f} / "
                     f"{b['default_minus_truncation_worst']:+.2f} | {t['gain_at_16']:+.2f} / {b['gain_at_16']:+.2f} |")
    lines += ["", "Kept: M = mlp, P = pca, L = learned, t = truncation, per size from 384 to 16. Best candidate "
              "alone: per size, the candidate (fit alone, gated) with the highest score on that task."]
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=fitting.DEFAULTS["epochs"], help="unsupervised epochs")
    parser.add_argument("--scifact-docs", type=int, default=2500, help="SciFact abstracts to fit on (first N)")
    parser.add_argument("--limit", type=int, help="fit on a seeded sample of N texts of each corpus (quick runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", help="embedding cache folder (default outputs/embedding_cache)")
    parser.add_argument("--fits-dir", help="save the fitted candidates here and reuse them when present (re-score "
                        "without refitting)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "adaptor_transfer"))
    parser.add_argument("--summarize", nargs="+", metavar="JSON",
                        help="fit nothing: tabulate these per-seed reports (one per seed) into --out")
    parser.add_argument("--before", nargs="+", metavar="JSON",
                        help="with --summarize: the same seeds' reports under the default before, side by side")
    args = parser.parse_args()
    if args.summarize:
        now = [json.loads(Path(f).read_text()) for f in args.summarize]
        before = [json.loads(Path(f).read_text()) for f in args.before or args.summarize]
        names = [", ".join(f"`{Path(f).name}`" for f in files) for files in (args.summarize, args.before or [])]
        report = {"command": command_line(), "machine": now[0]["machine"] + " (the per-seed runs')",
                  "setup": f"Tabulated from the per-seed reports {names[0]}"
                           + (f" (the default now) and {names[1]} (the default before)" if args.before else "")
                           + f"; each: `{now[0]['command']}` with its seed.",
                  "rows": summary(now, before)}
        write_results(args.out, report, summary_markdown(report))
        print(f"wrote {args.out}.json and .md")
        return
    if not DATA.is_dir():
        raise SystemExit(f"{DATA}: the development data folder is missing (see its README).")
    torch.manual_seed(args.seed)

    def embed(texts, max_length=64):  # the model loads only when some text is not cached yet
        vectors = cached_embeddings(load_model, texts, "all-MiniLM-L6-v2", max_length=max_length,
                                    cache_dir=args.cache_dir)
        return torch.as_tensor(np.asarray(vectors, dtype=np.float32))

    scorer = Scorer(embed)
    report = {"command": command_line(), "machine": machine(load=True), "model": "all-MiniLM-L6-v2",
              "setup": "all-MiniLM-L6-v2 (not MRL-trained); `mrl_text.adaptor.fit` unsupervised with the library's "
                       f"defaults ({args.epochs} epochs, 10% of the fit corpus held out for the gate), sizes {DIMS}. "
                       "Rows: plain truncation; the default (rotation=\"auto\": at each size the candidate that "
                       "validates best, or truncation); each candidate alone as `fit(rotation=...)` returns it "
                       "(gated); each candidate with every size adapted (no gate); the alternative choice (candidates "
                       "ranked by the closest pairs' Spearman gain alone instead of the summed gate gains). "
                       "Scored on STS-B test, which no fit saw; the "
                       "SciFact fit also in domain (SciFact test claims among its abstracts)."
                       + (f" Candidates fit once and saved under {args.fits_dir} (fit seconds from that run)."
                          if args.fits_dir else ""),
              "options": {"epochs": args.epochs, "seed": args.seed, "scifact_docs": args.scifact_docs,
                          "limit": args.limit}, "results": []}
    for fit_name, (texts, max_length) in fit_corpora(args.scifact_docs, args.limit).items():
        corpus = embed(texts, max_length)
        in_domain = InDomainRetrieval(embed, texts, corpus) if fit_name == "scifact abstracts" else None
        result = run_pair(fit_name, corpus, scorer, {"epochs": args.epochs}, args.seed, args.fits_dir, in_domain)
        result["targets"] = targets(result)
        report["results"].append(result)
        print(json.dumps({"fit_on": fit_name, "chosen": result["chosen"], "targets": result["targets"]}))
    os.makedirs(Path(args.out).parent, exist_ok=True)
    write_results(args.out, report, markdown(report))
    print(f"wrote {args.out}.json and .md")


if __name__ == "__main__":
    main()
