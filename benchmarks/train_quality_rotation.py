"""Could a learned rotation of the embedding move the useful directions into the prefixes? A cheap CPU probe.

A rotation (an orthogonal matrix after pooling) leaves every full-size cosine similarity unchanged, so full-size
quality would stay exactly that of plain training while the prefixes change. This probe tests the idea without
training the encoder: it embeds a sample of the benchmark's training data and evaluation sets once with the starting
model (cached to `--cache`), learns a rotation on the cached training embeddings (Adam, polar retraction to the
nearest orthogonal matrix after every step) with InfoNCE and/or prefix-to-full similarity distillation at sizes
256..16, and scores sizes 64/32/16 with the search harness's metrics (benchmarks/train_quality_search.py).

Samples (CPU budget): 2,048 SNLI triplets + 1,024 MRPC pairs for training; STS-B test in full; SciFact test queries
against their relevant documents plus every fifth other document (1,253 of 5,183: nDCG is higher than on the full
corpus); Banking77 probe trained on every third training text, tested on the full test set.

    python benchmarks/train_quality_rotation.py --model MODEL_DIR --data DATA_DIR --cache outputs/rotation_cache.pt
"""

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_quality_search as search  # noqa: E402

SMALL = [256, 128, 64, 32, 16]
SETTINGS = {
    "identity": None,
    "pca": "pca",
    "rot_nce": {"lr": 1e-3, "epochs": 2},
    "rot_kd": {"w_nce": 0.0, "kd": 1.0, "epochs": 2},
    "rot_nce_lr1e-2": {"lr": 1e-2, "epochs": 2},
}


def build_cache(model_dir, data, path):
    model = search.Encoder(model_dir, "cuda" if torch.cuda.is_available() else "cpu")
    triplets, pairs = search.load_train(data)
    random.Random(0).shuffle(triplets)
    random.Random(1).shuffle(pairs)
    triplets, pairs = triplets[:2048], pairs[:1024]
    ev = search.load_eval(data)
    cache = {
        "trip": [model.encode([t[i] for t in triplets], max_len=64) for i in range(3)],
        "pairs": [model.encode([p[i] for p in pairs], max_len=64) for i in range(2)],
        "s1": model.encode([r["sentence1"] for r in ev["sts"]]),
        "s2": model.encode([r["sentence2"] for r in ev["sts"]]),
        "btr_idx": list(range(0, len(ev["btr"]), 3)),
        "bte": model.encode([r["text"] for r in ev["bte"]]),
        "q": model.encode([ev["queries"][k] for k in ev["queries"]]),
    }
    cache["btr"] = model.encode([ev["btr"][i]["text"] for i in cache["btr_idx"]])
    relevant = {d for v in ev["qrels"].values() for d in v}
    cache["cids"] = [k for i, k in enumerate(ev["corpus"]) if k in relevant or i % 5 == 0]
    cache["c"] = model.encode([ev["corpus"][k] for k in cache["cids"]], bs=32)
    torch.save(cache, path)
    return cache


def batches(cache, seed, epochs, batch_size=32):
    order = []
    for epoch in range(epochs):
        rng = random.Random(seed + epoch)
        for key in ("trip", "pairs"):
            rows = list(range(len(cache[key][0])))
            rng.shuffle(rows)
            order += [(key, rows[i : i + batch_size]) for i in range(0, len(rows) - batch_size + 1, batch_size)]
    random.Random(seed).shuffle(order)
    return order


def pca(cache):
    x = torch.cat([F.normalize(e, dim=-1) for e in cache["trip"][:2] + cache["pairs"]]).double()
    x = x - x.mean(0)
    values, vectors = torch.linalg.eigh(x.T @ x)
    return vectors[:, values.argsort(descending=True)].T.float().contiguous()


def learn_rotation(cache, lr=1e-3, epochs=1, w_nce=1.0, kd=0.0, scale=20.0):
    rotation = torch.eye(384, requires_grad=True)
    optimizer = torch.optim.Adam([rotation], lr=lr)
    for key, rows in batches(cache, 42, epochs):
        rotated = [e[rows] @ rotation.T for e in cache[key]]
        full = [F.normalize(e[rows], dim=-1) for e in cache[key]]
        target = full[0] @ torch.cat(full[1:]).T  # the full size's similarities: a rotation does not change them
        loss = 0.0
        for dim in SMALL:
            prefixes = [F.normalize(e[:, :dim], dim=-1) for e in rotated]
            sims = prefixes[0] @ torch.cat(prefixes[1:]).T
            if w_nce:
                loss = loss + w_nce * F.cross_entropy(scale * sims, torch.arange(len(rows)))
            if kd:
                loss = loss + kd * F.kl_div(
                    F.log_softmax(scale * sims, -1), F.log_softmax(scale * target, -1), log_target=True, reduction="batchmean"
                )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # polar retraction onto the orthogonal matrices
            u, _, vh = torch.linalg.svd(rotation)
            rotation.copy_(u @ vh)
    return rotation.detach()


def score(cache, ev, rotation, dims=(64, 32, 16)):
    gold = [float(r["score"]) for r in ev["sts"]]
    labels_train = [ev["btr"][i]["label"] for i in cache["btr_idx"]]
    labels_test = [r["label"] for r in ev["bte"]]
    out = {}
    for dim in dims:
        def prefix(x):
            return F.normalize((x @ rotation.T)[:, :dim], dim=-1)

        sts = search.spearmanr((prefix(cache["s1"]) * prefix(cache["s2"])).sum(-1).numpy(), gold).statistic
        ndcg = search.ndcg10(prefix(cache["q"]), prefix(cache["c"]), list(ev["queries"]), cache["cids"], ev["qrels"])
        acc = search.probe(prefix(cache["btr"]).numpy(), labels_train, prefix(cache["bte"]).numpy(), labels_test)
        out[dim] = {"sts": 100 * sts, "scifact": 100 * ndcg, "banking77": 100 * acc, "avg": 100 * (sts + ndcg + acc) / 3}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cache = torch.load(args.cache) if Path(args.cache).is_file() else build_cache(args.model, args.data, args.cache)
    ev = search.load_eval(args.data)
    results = {}
    for name in args.settings.split(","):
        setting, start = SETTINGS[name], time.time()
        if setting is None:
            rotation = torch.eye(384)
        elif setting == "pca":
            rotation = pca(cache)
        else:
            rotation = learn_rotation(cache, **setting)
        results[name] = score(cache, ev, rotation)
        print(name.ljust(16), "  ".join(f"{d}: {r['avg']:.2f} ({r['sts']:.1f}/{r['scifact']:.1f}/{r['banking77']:.1f})" for d, r in results[name].items()), f"[{time.time() - start:.0f}s]", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
