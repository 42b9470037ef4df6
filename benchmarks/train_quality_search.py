"""Fast search over Matryoshka training settings: the harness behind the search table of train_quality.md.

Written before `mrl_text.trainer` and `mrl_text.evaluation` existed, to fit ~17 settings into one short GPU call: a
plain torch loop (AdamW, 10% linear warm-up then linear decay, batch 32, max_seq_length 64, seed 42) over the
benchmark's data (SNLI dev+test triplets, first entailment/contradiction per premise; MRPC label-1 pairs of train and
test; one source per batch), and the benchmark's protocol re-implemented in a few lines (STS-B test Spearman,
SciFact test nDCG@10 with title + ' ' + text documents, Banking77 logistic-regression probe; max_seq_length 256;
prefixes re-normalized). Its plain and peer-equivalent rows reproduce the issue's known starting point within 0.3.
It is a search tool, not the benchmark: settings worth keeping are re-measured with benchmarks/train_quality.py.

Knobs of a setting (see VARIANTS): per-size weights and InfoNCE scales, a schedule of the small sizes' weights
(`small_schedule`), prefix-to-full similarity distillation (`kd`, `mse`), distillation of every size toward the
frozen starting model's full-size similarities (`teacher_kd`), gradient surgery on the embeddings (`pcgrad`), a PCA
rotation after pooling (`pca`), epochs. `--eval-sample` is the CPU proxy: SciFact on its relevant documents plus
every fifth other one, the Banking77 probe on a third of its training texts (STS-B in full).

    python benchmarks/train_quality_search.py --model MODEL_DIR --data DATA_DIR --out search.json --variants base,a_plain,kd1
"""
import argparse
import csv
import json
import math
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from transformers import AutoModel, AutoTokenizer

DIMS = [384, 256, 128, 64, 32, 16]


def read_tsv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def load_train(data):
    rows = read_tsv(f"{data}/snli/dev.tsv") + read_tsv(f"{data}/snli/test.tsv")
    by_premise = {}
    for r in rows:
        by_premise.setdefault(r["premise"], {}).setdefault(r["label"], r["hypothesis"])
    triplets = [(p, h["entailment"], h["contradiction"]) for p, h in by_premise.items() if "entailment" in h and "contradiction" in h]
    pairs = [(r["sentence1"], r["sentence2"]) for s in ("train", "test") for r in read_tsv(f"{data}/mrpc/{s}.tsv") if r["label"] == "1"]
    return triplets, pairs


def make_batches(triplets, pairs, bs, seed):
    rng = random.Random(seed)
    batches = []
    for rows in (triplets, pairs):
        rows = rows[:]
        rng.shuffle(rows)
        batches += [rows[i : i + bs] for i in range(0, len(rows) - bs + 1, bs)]
    rng.shuffle(batches)
    return batches


def load_eval(data, subset=None, sample=False):
    sts = read_tsv(f"{data}/stsb/test.tsv")
    corpus = {}
    for line in open(f"{data}/scifact/corpus.jsonl", encoding="utf-8"):
        d = json.loads(line)
        corpus[str(d["_id"])] = (f"{d.get('title') or ''} {d['text']}").strip()
    queries = {}
    for line in open(f"{data}/scifact/queries.jsonl", encoding="utf-8"):
        d = json.loads(line)
        queries[str(d["_id"])] = d["text"]
    qrels = {}
    for r in read_tsv(f"{data}/scifact/qrels/test.tsv"):
        qrels.setdefault(r["query-id"], {})[r["corpus-id"]] = int(r["score"])
    queries = {q: queries[q] for q in qrels}
    btr, bte = read_tsv(f"{data}/banking77/train.tsv"), read_tsv(f"{data}/banking77/test.tsv")
    if subset:
        sts = sts[:subset]
        keep = set(list(qrels)[: subset // 10])
        qrels = {q: v for q, v in qrels.items() if q in keep}
        queries = {q: queries[q] for q in qrels}
        docs = {d for v in qrels.values() for d in v}
        corpus = {k: v for i, (k, v) in enumerate(corpus.items()) if i < subset or k in docs}
        btr, bte = btr[::50], bte[::50]
    if sample:  # the CPU proxy: every relevant SciFact document plus every fifth other one; a third of Banking77 train
        docs = {d for v in qrels.values() for d in v}
        corpus = {k: v for i, (k, v) in enumerate(corpus.items()) if k in docs or i % 5 == 0}
        btr = btr[::3]
    return dict(sts=sts, corpus=corpus, queries=queries, qrels=qrels, btr=btr, bte=bte)


class Encoder(torch.nn.Module):
    def __init__(self, path, device):
        super().__init__()
        self.bert = AutoModel.from_pretrained(path, dtype=torch.float32).to(device)
        self.tok = AutoTokenizer.from_pretrained(path)
        self.rot = None
        self.device = device

    def forward(self, texts, max_len):
        b = self.tok(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt").to(self.device)
        h = self.bert(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).to(h.dtype)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.rot is not None:
            e = e @ self.rot
        return e

    @torch.no_grad()
    def encode(self, texts, max_len=256, bs=128):
        self.eval()
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = torch.empty(len(texts), 384)
        for i in range(0, len(texts), bs):
            idx = order[i : i + bs]
            out[idx] = self([texts[j] for j in idx], max_len).float().cpu()
        self.train()
        return out


def unit(e, d):
    return F.normalize(e[..., :d], dim=-1)


def infonce(a, cands, scale, symmetric=False, p=None):
    labels = torch.arange(a.shape[0], device=a.device)
    loss = F.cross_entropy(scale * a @ cands.T, labels)
    if symmetric:
        loss = (loss + F.cross_entropy(scale * p @ a.T, labels)) / 2
    return loss


def similarity_kl(sim, target_sim, scale):
    """KL divergence from the softmax over a row's target similarities to the softmax over its similarities."""
    return F.kl_div(F.log_softmax(scale * sim, -1), F.log_softmax(scale * target_sim, -1), log_target=True, reduction="batchmean")


def make_loss(v):
    """v: dict of setting knobs -> loss(embs list) on full-size un-normalized embeddings."""
    dims = v.get("dims", DIMS)
    weights = v.get("weights", [1.0] * len(dims))
    scale = v.get("scale", 20.0)
    kd = v.get("kd", 0.0)  # weight of prefix->full similarity distillation (KL) per small size
    kd_t = v.get("kd_scale", scale)
    mse = v.get("mse", 0.0)
    sym = v.get("symmetric", False)
    size_scale = v.get("size_scale")  # dict dim -> scale
    teacher_kd = v.get("teacher_kd", 0.0)  # weight: every size's similarities -> the frozen starting model's full size
    teacher_kd_dims = v.get("teacher_kd_dims", dims)

    def loss(embs, teacher_sim=None, part=None, small_factor=1.0):
        """part: None for every size, "full" for the full size's terms only, "small" for the other sizes' terms;
        small_factor scales the small sizes' InfoNCE weights (a weight schedule)."""
        total = 0.0
        for d, w in zip(dims, weights):
            w = w if d == dims[0] else w * small_factor
            xs = [unit(e, d) for e in embs]
            a, cands = xs[0], torch.cat(xs[1:], 0)
            s = size_scale.get(d, scale) if size_scale else scale
            sim = a @ cands.T
            if d == dims[0]:
                full_sim = sim.detach()  # the target of the small sizes' distillation, whichever part is asked for
            if part == "full" and d != dims[0] or part == "small" and d == dims[0]:
                continue
            if w:
                total = total + w * infonce(a, cands, s, sym, xs[1])
            if d != dims[0] and kd:
                total = total + kd * similarity_kl(sim, full_sim, kd_t)
            if d != dims[0] and mse:
                total = total + mse * ((sim - full_sim) ** 2).mean() * 100
            if teacher_kd and d in teacher_kd_dims:
                total = total + teacher_kd * similarity_kl(sim, teacher_sim, kd_t)
        return total

    return loss


def pca_rotation(model, texts, max_len):
    e = model.encode(texts, max_len=max_len)
    e = F.normalize(e, dim=-1).double()
    cov = e.T @ e / len(e)  # uncentered: rotation keeps every full-size cosine exact
    vals, vecs = torch.linalg.eigh(cov)
    return vecs[:, vals.argsort(descending=True)].float()


def train(v, args, triplets, pairs, device):
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    model = Encoder(args.model, device)
    if v.get("pca"):
        texts = [t[0] for t in triplets] + [p[0] for p in pairs]
        model.rot = pca_rotation(model, texts[: args.pca_texts or None], args.max_len).to(device)
        if v.get("pca_trainable"):
            model.rot = torch.nn.Parameter(model.rot)
    loss_fn = make_loss(v)
    epochs = v.get("epochs", args.epochs)
    batches = []
    for ep in range(epochs):
        batches += make_batches(triplets, pairs, args.batch_size, args.seed + ep)
    if args.max_steps:
        batches = batches[: args.max_steps]
    params = list(model.bert.parameters()) + ([model.rot] if isinstance(model.rot, torch.nn.Parameter) else [])
    opt = torch.optim.AdamW(params, lr=v.get("lr", args.lr), weight_decay=0.01)
    total = len(batches)
    warm = int(0.1 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    teacher = None
    if v.get("teacher_kd"):
        teacher = Encoder(args.model, device)
        teacher.rot = model.rot.detach().clone() if model.rot is not None else None
        teacher.eval()
    model.train()
    t0 = time.time()
    for step, batch in enumerate(batches):
        cols = list(zip(*batch))
        n = len(batch)

        def by_column(x):
            return [x[i * n : (i + 1) * n] for i in range(len(cols))]

        texts = [t for c in cols for t in c]
        emb = model(texts, args.max_len)
        teacher_sim = None
        if teacher is not None:
            with torch.no_grad():
                t_embs = [F.normalize(e, dim=-1) for e in by_column(teacher(texts, args.max_len))]
                teacher_sim = t_embs[0] @ torch.cat(t_embs[1:], 0).T
        small_factor = {"decay": 1 - step / total, "ramp": step / total}.get(v.get("small_schedule"), 1.0)
        if v.get("pcgrad"):
            # gradient surgery on the embeddings (one encoder backward): the small sizes' gradient loses its component
            # against the full size's wherever the two conflict
            leaf = emb.detach().requires_grad_()
            l_full = loss_fn(by_column(leaf), teacher_sim, part="full")
            l_small = loss_fn(by_column(leaf), teacher_sim, part="small", small_factor=small_factor)
            g_full, = torch.autograd.grad(l_full, leaf, retain_graph=True)
            g_small, = torch.autograd.grad(l_small, leaf)
            if v["pcgrad"] == "row":
                dot = (g_small * g_full).sum(-1, keepdim=True)
                g_small = g_small - dot.clamp(max=0) / g_full.pow(2).sum(-1, keepdim=True).clamp(min=1e-20) * g_full
            else:
                dot = (g_small * g_full).sum()
                if dot < 0:
                    g_small = g_small - dot / g_full.pow(2).sum().clamp(min=1e-20) * g_full
            loss = (l_full + l_small).detach()
        else:
            loss = loss_fn(by_column(emb), teacher_sim, small_factor=small_factor)
        if not torch.isfinite(loss):
            raise RuntimeError(f"NaN loss at step {step}")
        if v.get("pcgrad"):
            emb.backward(g_full + g_small)
        else:
            loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return model, time.time() - t0, total


def ndcg10(q_emb, c_emb, qids, cids, qrels):
    sims = q_emb @ c_emb.T
    top = sims.topk(10, dim=1).indices.tolist()
    scores = []
    for qi, q in enumerate(qids):
        rel = qrels[q]
        dcg = sum(rel.get(cids[j], 0) / math.log2(r + 2) for r, j in enumerate(top[qi]))
        ideal = sorted(rel.values(), reverse=True)[:10]
        idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
        scores.append(dcg / idcg if idcg else 0.0)
    return float(np.mean(scores))


def probe(train_x, train_y, test_x, test_y):
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=1000, random_state=0).fit(train_x, train_y)
    return float((clf.predict(test_x) == np.array(test_y)).mean())


def evaluate(model, ev, pool):
    sts = ev["sts"]
    s1 = model.encode([r["sentence1"] for r in sts])
    s2 = model.encode([r["sentence2"] for r in sts])
    gold = [float(r["score"]) for r in sts]
    cids = list(ev["corpus"])
    c = model.encode([ev["corpus"][k] for k in cids])
    qids = list(ev["queries"])
    q = model.encode([ev["queries"][k] for k in qids])
    btr = model.encode([r["text"] for r in ev["btr"]])
    bte = model.encode([r["text"] for r in ev["bte"]])
    res = {}
    futures = {}
    for d in DIMS:
        sp = spearmanr((unit(s1, d) * unit(s2, d)).sum(-1).numpy(), gold).statistic
        nd = ndcg10(unit(q, d), unit(c, d), qids, cids, ev["qrels"])
        res[d] = {"sts": float(sp), "scifact": nd}
        futures[d] = pool.submit(probe, unit(btr, d).numpy(), [r["label"] for r in ev["btr"]], unit(bte, d).numpy(), [r["label"] for r in ev["bte"]])
    return res, futures


VARIANTS = {
    "base": None,  # the starting model, untrained
    "a_plain": dict(dims=[384], weights=[1.0]),
    "c_st_equiv": dict(),  # sum of InfoNCE at every size, weight 1 (what ST MatryoshkaLoss(MNRL) computes)
    "mean_w": dict(weights=[1 / 6] * 6),
    "full1_small0.2": dict(weights=[1, 0.2, 0.2, 0.2, 0.2, 0.2]),
    "full1_small0.1": dict(weights=[1, 0.1, 0.1, 0.1, 0.1, 0.1]),
    "kd1": dict(weights=[1, 0, 0, 0, 0, 0], kd=1.0),
    "kd0.3": dict(weights=[1, 0, 0, 0, 0, 0], kd=0.3),
    "kd1_small0.1": dict(weights=[1, 0.1, 0.1, 0.1, 0.1, 0.1], kd=1.0),
    "kd1_t5": dict(weights=[1, 0, 0, 0, 0, 0], kd=1.0, kd_scale=5.0),
    "kd3": dict(weights=[1, 0, 0, 0, 0, 0], kd=3.0),
    "kd1_sym": dict(weights=[1, 0, 0, 0, 0, 0], kd=1.0, symmetric=True),
    "mse1": dict(weights=[1, 0, 0, 0, 0, 0], mse=1.0),
    "c_sym": dict(symmetric=True),
    "kd1_2ep": dict(weights=[1, 0, 0, 0, 0, 0], kd=1.0, epochs=2),
    "a_plain_2ep": dict(dims=[384], weights=[1.0], epochs=2),
    "pca_a_plain": dict(dims=[384], weights=[1.0], pca=True),
    "pca_kd1": dict(weights=[1, 0, 0, 0, 0, 0], kd=1.0, pca=True),
    "pca_small0.2": dict(weights=[1, 0.2, 0.2, 0.2, 0.2, 0.2], pca=True),
    "pca_c": dict(pca=True),
    "pcgrad": dict(pcgrad="global"),
    "pcgrad_row": dict(pcgrad="row"),
    "anchor_all": dict(teacher_kd=1.0),  # InfoNCE at every size + every size distilled to the starting model's full size
    "anchor_full": dict(teacher_kd=1.0, teacher_kd_dims=[384]),
    "anchor_kd": dict(weights=[1, 0, 0, 0, 0, 0], teacher_kd=1.0),
    "sched_decay": dict(small_schedule="decay"),  # small sizes' weight 1 -> 0 over training: end as plain training
    "sched_ramp": dict(small_schedule="ramp"),  # 0 -> 1: start as plain training
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--eval-subset", type=int, default=0)
    p.add_argument("--eval-sample", action="store_true", help="CPU proxy: a fifth of SciFact's other documents, a third of Banking77 train")
    p.add_argument("--pca-texts", type=int, default=0)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--extra", default="", help="json dict of extra variants")
    args = p.parse_args()
    if args.extra:
        VARIANTS.update(json.loads(args.extra))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
    triplets, pairs = load_train(args.data)
    print(f"train: {len(triplets)} triplets, {len(pairs)} pairs; device {device}", flush=True)
    ev = load_eval(args.data, args.eval_subset or None, args.eval_sample)
    import multiprocessing
    pool = ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"))
    pending, results = [], {}
    for name in args.variants.split(","):
        v = VARIANTS[name]
        t0 = time.time()
        if v is None:
            model, tt, steps = Encoder(args.model, device), 0.0, 0
        else:
            model, tt, steps = train(v, args, triplets, pairs, device)
        res, fut = evaluate(model, ev, pool)
        del model
        pending.append((name, v, res, fut, tt, steps))
        print(f"{name}: trained {steps} steps in {tt:.1f}s, total {time.time() - t0:.1f}s", flush=True)
        print("   sts", " ".join(f"{d}:{100 * res[d]['sts']:.2f}" for d in DIMS), "| scifact", " ".join(f"{d}:{100 * res[d]['scifact']:.2f}" for d in DIMS), flush=True)
    for name, v, res, fut, tt, steps in pending:
        for d in DIMS:
            res[d]["banking77"] = fut[d].result()
            res[d]["avg"] = (res[d]["sts"] + res[d]["scifact"] + res[d]["banking77"]) / 3
        results[name] = {"setting": v, "train_s": tt, "steps": steps, "per_dim": res}
        print(name.ljust(16), " ".join(f"{d}:{100 * res[d]['avg']:.2f}" for d in DIMS), flush=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
