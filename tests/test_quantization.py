"""Precision: one quantization rule (the codes of sentence-transformers' `quantize_embeddings`), calibrated per size
and saved in config.json, used by `encode(precision=)`."""

import json

import numpy as np
import pytest
import torch

from mrl_text import MatryoshkaConfig
from mrl_text.models.quantization import bytes_per_vector, calibration_ranges, dequantize, quantize

from .conftest import run_without_mrl_text, tiny_bert_config


@pytest.mark.parametrize("precision", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_codes_equal_sentence_transformers(precision):
    """Same embeddings and ranges give bit-identical codes to sentence-transformers' quantize_embeddings."""
    from sentence_transformers.util.quantization import quantize_embeddings

    generator = torch.Generator().manual_seed(0)
    calibration = torch.nn.functional.normalize(torch.randn(200, 64, generator=generator), dim=-1)
    embeddings = torch.nn.functional.normalize(torch.randn(50, 64, generator=generator), dim=-1)
    embeddings[0, :3] = torch.tensor([0.0, 5.0, -5.0])  # exactly on the sign threshold, above max, below min
    ranges = calibration_ranges(calibration)
    ours = quantize(embeddings, precision, ranges).numpy()
    theirs = quantize_embeddings(embeddings.numpy(), precision, ranges=ranges.numpy())
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


def test_dequantize_round_trips():
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(40, 16, generator=generator)
    ranges = calibration_ranges(embeddings)
    for precision in ("int8", "uint8"):
        back = dequantize(quantize(embeddings, precision, ranges), precision, ranges)
        step = (ranges[1] - ranges[0]) / 255
        assert ((back - embeddings).abs() <= step / 2 + 1e-6).all()  # the middle of the step holding each value
    signs = dequantize(quantize(embeddings, "binary"), "binary")
    assert torch.equal(signs, torch.where(embeddings > 0, 1.0, -1.0))
    assert torch.equal(dequantize(quantize(embeddings, "ubinary"), "ubinary"), signs)
    assert [bytes_per_vector(64, p) for p in ("float32", "int8", "uint8", "binary", "ubinary")] == [256, 64, 64, 8, 8]


def test_bad_precision_inputs_are_named():
    with pytest.raises(ValueError, match="precision='int4'.*float32, int8"):
        quantize(torch.randn(3, 8), "int4")
    with pytest.raises(ValueError, match="multiple of 8; got dim=12"):
        quantize(torch.randn(3, 12), "binary")
    with pytest.raises(ValueError, match="needs calibrated ranges"):
        quantize(torch.randn(3, 8), "int8")
    with pytest.raises(ValueError, match="at least 2 embeddings"):
        calibration_ranges(torch.randn(1, 8))
    with pytest.raises(ValueError, match="must be floats"):
        quantize(torch.zeros(3, 8, dtype=torch.int8), "binary")


@pytest.mark.slow
def test_encode_precision_calibrated_and_saved(make_model, sentences, tmp_path):
    model = make_model(matryoshka_dimensions=(32, 16, 8, 4))
    # int8 on an uncalibrated model: a clear error that says to calibrate, before any encoding
    with pytest.raises(ValueError, match=r"calibrate_quantization\(texts\)"):
        model.encode(sentences, dim=16, precision="int8")
    ranges = model.calibrate_quantization(sentences * 4)
    assert sorted(ranges) == [4, 8, 16, 32]
    # per size, after truncation and re-normalization
    floats = model.encode(sentences, dim=16)
    torch.testing.assert_close(ranges[16], torch.stack([floats.min(0).values, floats.max(0).values]))
    codes = model.encode(sentences, dim=16, precision="int8")
    assert codes.dtype == torch.int8 and codes.shape == (len(sentences), 16)
    assert torch.equal(codes, quantize(floats, "int8", ranges[16]))
    bits = model.encode(sentences, dim=16, precision="ubinary", convert_to_numpy=True)
    assert bits.dtype == np.uint8 and bits.shape == (len(sentences), 2)
    assert model.encode(sentences[0], dim=8, precision="binary").shape == (1,)
    with pytest.raises(ValueError, match="multiple of 8; got dim=4"):
        model.encode(sentences, dim=4, precision="binary")
    with pytest.raises(ValueError, match="precision='fp16'"):
        model.encode(sentences, precision="fp16")

    model.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())["quantization_ranges"]
    assert sorted(saved, key=int) == ["4", "8", "16", "32"] and len(saved["16"][0]) == 16
    # a pulled copy, without mrl-text, makes the same codes
    torch.save(codes, tmp_path / "expected.pt")
    script = f"""
        import torch
        from transformers import AutoModel
        m = AutoModel.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True).eval()
        assert "mrl_text" not in sys.modules
        got = m.encode({sentences!r}, dim=16, precision="int8")
        assert torch.equal(got, torch.load({str(tmp_path / "expected.pt")!r}))
        print("REMOTE-OK")
        """
    run_without_mrl_text(script, tmp_path)


def test_calibration_extends_to_other_sizes(make_model, sentences):
    model = make_model(matryoshka_dimensions=(32, 16))
    model.calibrate_quantization(sentences)
    with pytest.warns(UserWarning, match="not one of the trained sizes"):
        with pytest.raises(ValueError, match=r"only for sizes \[32, 16\].*dims=\[24\]"):
            model.encode(sentences, dim=24, precision="uint8")
    model.calibrate_quantization(sentences, dims=[24])
    assert sorted(model.config.quantization_ranges, key=int) == ["16", "24", "32"]


def test_calibration_per_depth(make_model, sentences, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = make_model(matryoshka_dimensions=(32, 16), matryoshka_layers=[2, 1])
    measured = model.calibrate_quantization(sentences * 2)  # every trained depth: one pass each
    assert sorted(model.config.quantization_ranges) == ["16", "16/layers=1", "32", "32/layers=1"]
    assert sorted(measured, key=str) == sorted([32, 16, (1, 32), (1, 16)], key=str)
    shallow = model.encode(sentences, dim=16, layers=1)
    torch.testing.assert_close(measured[1, 16], torch.stack([shallow.min(0).values, shallow.max(0).values]))
    codes = model.encode(sentences, dim=16, layers=1, precision="int8")
    assert torch.equal(codes, quantize(shallow, "int8", measured[1, 16]))
    assert not torch.equal(measured[1, 16], measured[16])  # a depth has ranges of its own
    assert torch.equal(model.encode(sentences, dim=16, precision="int8"),
                       quantize(model.encode(sentences, dim=16), "int8", measured[16]))
    # saved and loaded (also by sentence-transformers, whose module hands out the depth's ranges)
    model.save_pretrained(tmp_path / "model")
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu", trust_remote_code=True)
    module = next(m for m in st if type(m).__name__ == "MatryoshkaTruncation")
    floats = st.encode(sentences, dim=16, layers=1)
    np.testing.assert_array_equal(module.quantize(floats, "int8", layers=1), codes.numpy())
    np.testing.assert_array_equal(module.quantization_ranges(16, layers=1), measured[1, 16].numpy())
    again = type(model).from_pretrained(tmp_path / "model")
    again.tokenizer = model.tokenizer
    assert torch.equal(again.encode(sentences, dim=16, layers=1, precision="int8"), codes)


def test_a_depth_never_borrows_the_full_depths_ranges(make_model, sentences):
    model = make_model(matryoshka_dimensions=(32, 16), matryoshka_layers=[2, 1])
    model.calibrate_quantization(sentences, layers=[2])  # full depth only: the per-size format of before
    assert sorted(model.config.quantization_ranges) == ["16", "32"]
    with pytest.raises(
        ValueError,
        match=r"dim=16 at layers=1 needs calibrated ranges, and this model has none at layers=1.*"
        r"calibrate_quantization\(texts, layers=\[1\]\)",
    ):
        model.encode(sentences, dim=16, layers=1, precision="int8")
    with pytest.raises(ValueError, match="layers=3 is out of range"):
        model.calibrate_quantization(sentences, layers=[1, 3])
    assert sorted(model.config.quantization_ranges) == ["16", "32"]  # checked before anything was measured
    model.calibrate_quantization(sentences, dims=[16], layers=1)
    assert model.encode(sentences, dim=16, layers=1, precision="uint8").dtype == torch.uint8


@pytest.mark.parametrize(
    "value, message",
    [
        ({"16": [[0.0] * 16]}, "two lists"),
        ({"16": [[0.0] * 16, [float("nan")] * 16]}, "finite"),
        ({"16": [[1.0] * 16, [0.0] * 16]}, "minima <= maxima"),
        ({"99": [[0.0] * 99, [1.0] * 99]}, "not a size in 1..32"),
        ({"16/layers=2": [[0.0] * 16, [1.0] * 16]}, "below the encoder's full depth"),  # full depth: plain key
        ({"16/depth=1": [[0.0] * 16, [1.0] * 16]}, "not a size"),
        ([1, 2], "must be a dict"),
    ],
)
def test_config_refuses_bad_ranges(value, message):
    with pytest.raises(ValueError, match=message):
        MatryoshkaConfig(encoder=tiny_bert_config(), matryoshka_dimensions=[32, 16], quantization_ranges=value)


def test_sentence_transformers_folder_uses_the_calibrated_ranges(make_model, sentences, tmp_path):
    """sentence-transformers' own encode(precision="int8") calibrates on the batch; the saved folder's module hands
    out the model's ranges, and with them both libraries make the model's codes."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util.quantization import quantize_embeddings

    model = make_model(matryoshka_dimensions=(32, 16, 8))
    model.calibrate_quantization(sentences * 2)
    model.save_pretrained(tmp_path / "model")
    expected = model.encode(sentences, dim=16, precision="int8").numpy()
    st = SentenceTransformer(str(tmp_path / "model"), device="cpu", trust_remote_code=True)
    module = next(m for m in st if type(m).__name__ == "MatryoshkaTruncation")
    floats = st.encode(sentences, dim=16)
    np.testing.assert_array_equal(module.quantize(floats, "int8"), expected)
    np.testing.assert_array_equal(quantize_embeddings(floats, "int8", ranges=module.quantization_ranges(16)), expected)
    np.testing.assert_array_equal(
        module.quantize(floats, "ubinary"), st.encode(sentences, dim=16, precision="ubinary")
    )
