"""Fine-tune the features detector's backbone on normal films with mean-shifted contrastive
learning (issue 10, point 6), and score validation films after every epoch.

MSC (Reiss & Hoshen, "Mean-Shifted Contrastive Loss for Anomaly Detection", AAAI 2023): the
pretrained embedding of the normals is normalised, its mean ``c`` is fixed, and the backbone is
trained so that two augmented views of a film agree *as directions from c* (an NT-Xent loss on
``(z - c) / |z - c|``, temperature 0.25), which adapts the features to the normal class without
the collapse of centre-based losses. The embedding here is the default detector's: the
stride-32 map of EfficientNet-Lite0, average-pooled, on ``crop20+detail64+equalize`` films at
224 px; the score is its kNN (5 nearest normals, cosine), plus the Ledoit-Wolf Gaussian for
reference. Epoch 0 is the frozen backbone, i.e. the default detector (0.585 worst validation view
in docs/notebook/2026-11-results-history.md), computed in the same run.

The augmentations and the loss are the package's (:mod:`cxr_anomaly.models.features.finetune`,
which ``features.finetune_epochs`` runs inside the fit); this script adds the per-epoch scoring
that chose its settings.

Only validation films are scored (NIH1000 ``val`` and the validation half of nih_pneumonia256,
the films of docs/notebook/2026-11-results-history.md's choice table); the criterion is the worst of the four views.

    python -m docs.notebook.research.msc_finetune --train-films 1000 --epochs 3 --out runs/msc

``--augment pipeline`` adds, after the package's augmentations, what differs between hospitals'
pipelines and survives the preprocessing: a further contrast curve (gamma 0.8-1.25), a 3x3 blur
mixed in with a signed weight of up to 1.5 (from sharpening to blurring), and noise of up to 3%
of the range (:func:`pipeline_augment`).
``--extra-normals kermany`` fine-tunes on the 1,108 normal films of the Kermany train split too
(children, another hospital and exporter); the kNN that scores the validation films still reads
the RSNA films only, so the run measures what the other pipeline's normals teach the backbone.

On a GPU machine (``--device cuda``), ``--data`` names a copy of the films it reads
(``--pack DIR`` writes one: the first ``--train-films`` of rsna_normal224 and the validation
films, as they are) and ``--weights`` the Lite0 weight file, since neither package nor data is
there.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from docs.notebook.research.bank_sources import kermany_train_normals
from docs.notebook.research.features_probe import DATA, collections, per_view, preprocess
from docs.notebook.research.features_variants import knn
from sklearn.covariance import LedoitWolf

from cxr_anomaly.config import DataConfig
from cxr_anomaly.data.dataset import load_images
from cxr_anomaly.models.features.backbone import build_backbone
from cxr_anomaly.models.features.finetune import augment, mean_shifted_contrastive_loss

PREPROCESSING = "crop20+detail64+equalize"
VALIDATION = ("nih1000_val", "pneu_val")
logger = logging.getLogger("msc")


@dataclass(frozen=True)
class MscSettings:
    """The fine-tuning run; saved beside its results."""

    train_films: int = 1000
    epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 1e-4
    weight_decay: float = 5e-5
    temperature: float = 0.25
    trainable_from: int = 0  # index of the first trainable block; earlier ones stay frozen
    seed: int = 0
    size: int = 224
    augment: str = "default"  # or "pipeline": see pipeline_augment
    extra_normals: str = "none"  # or "kermany": its train split's normal films join the fine-tuning


def pipeline_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The package's views (:func:`augment`), then a pipeline's marks: gamma, blur or sharpening, noise.

    Images (N, 3, S, S) in [-1, 1]; every random draw comes from ``generator``.
    """
    views = augment(images, generator)
    count = views.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(count, generator=generator)).view(-1, 1, 1, 1).to(images.device)

    unit = ((views + 1.0) / 2.0).clamp(0.0, 1.0) ** uniform(0.8, 1.25)
    # a 3x3 blur, added (blur) or subtracted (sharpening) with a random signed weight
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]], device=images.device) / 16.0
    blurred = F.conv2d(F.pad(unit, (1, 1, 1, 1), mode="replicate"), kernel.expand(3, 1, 3, 3), groups=3)  # (N, 3, S, S)
    strength = uniform(-1.5, 1.5)
    unit = unit + strength * (blurred - unit)
    noise = torch.randn(unit.shape, generator=generator).to(images.device) * uniform(0.0, 0.03)
    return ((unit + noise).clamp(0.0, 1.0)) * 2.0 - 1.0


def embed(backbone: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(N, 3, S, S) -> (N, C) average-pooled stride-32 features, the default detector's."""
    return backbone(images)[32].float().mean(dim=(2, 3))


def embed_all(backbone: torch.nn.Module, images: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    device = next(backbone.parameters()).device
    with torch.inference_mode():
        return np.concatenate(
            [
                embed(backbone, images[begin : begin + batch_size].to(device)).cpu().numpy()
                for begin in range(0, len(images), batch_size)
            ]
        )


def evaluate(train: np.ndarray, sets: dict[str, np.ndarray], manifests: dict) -> dict[str, dict[str, float]]:
    """kNN-5 cosine and Ledoit-Wolf Gaussian AUCs per view of each validation set, and the worst view."""
    gaussian = LedoitWolf().fit(train)
    results: dict[str, dict[str, float]] = {}
    for score_name in ("knn5", "gauss"):
        row: dict[str, float] = {}
        for name, features in sets.items():
            scores = knn(train, features, 5) if score_name == "knn5" else gaussian.mahalanobis(features)
            for view, auc in per_view(scores, manifests[name]).items():
                row[f"{name}_{view}"] = round(float(auc), 4)
        row["worst"] = min(row[f"{name}_{view}"] for name in sets for view in ("PA", "AP"))
        results[score_name] = row
    return results


def pack(manifests: dict, data: Path, out: Path) -> None:
    """Copy the manifests and the image files of the sets this run reads from ``data`` to ``out``."""
    import shutil

    folders = {"rsna": "rsna_normal224", "nih1000_val": "nih1000", "pneu_val": "nih_pneumonia256"}
    for name, folder in folders.items():
        (out / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(data / folder / "manifest.csv", out / folder / "manifest.csv")
        for path in manifests[name]["path"]:
            relative = Path(path).resolve().relative_to((data / folder).resolve())
            (out / folder / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, out / folder / relative)
    logger.info("packed %s into %s", {name: len(manifests[name]) for name in folders}, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for field_name, default in asdict(MscSettings()).items():
        parser.add_argument(f"--{field_name.replace('_', '-')}", type=type(default), default=default)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/probe_cache"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DATA, help="folder of the collections")
    parser.add_argument("--weights", default=None, help="Lite0 state_dict file (default: the package's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--pack", type=Path, default=None, help="write the films this run reads to DIR and stop")
    parser.add_argument(
        "--save-embeddings",
        action="store_true",
        help="also write each epoch's pooled features to OUT/embeddings_epochN.npz "
        "(for ensembles over seeds: docs/notebook/research/msc_seed_ensemble.py)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    settings = MscSettings(**{name: getattr(args, name) for name in asdict(MscSettings())})
    torch.set_num_threads(args.threads)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    manifests = collections(data=args.data)
    manifests["rsna"] = manifests["rsna"].iloc[: settings.train_films].reset_index(drop=True)
    if args.pack is not None:
        pack(manifests, args.data, args.pack)
        return
    config = DataConfig(image_size=settings.size)
    inputs = {
        name: preprocess(
            load_images(manifests[name], config, cache_dir=args.cache, workers=2).pixels, PREPROCESSING, settings.size
        )
        for name in ("rsna", *VALIDATION)
    }  # (N, 3, S, S) each
    backbone, _ = build_backbone("efficientnet_lite0", args.weights)
    backbone = backbone.to(args.device)
    device = torch.device(args.device)

    history = []

    def record(epoch: int, loss: float, seconds: float) -> None:
        train = embed_all(backbone, inputs["rsna"])
        validation = {name: embed_all(backbone, inputs[name]) for name in VALIDATION}
        results = evaluate(train, validation, {name: manifests[name] for name in VALIDATION})
        if args.save_embeddings:
            np.savez(args.out / f"embeddings_epoch{epoch}.npz", rsna=train, **validation)
        history.append({"epoch": epoch, "loss": loss, "train_seconds": seconds, **results})
        logger.info(
            "epoch %d loss %.4f: knn5 %s | gauss worst %.3f", epoch, loss, results["knn5"], results["gauss"]["worst"]
        )
        (args.out / "history.json").write_text(json.dumps({"settings": asdict(settings), "history": history}, indent=1))

    train_inputs = inputs["rsna"]
    if settings.extra_normals == "kermany":
        extra = load_images(kermany_train_normals(args.data), config, cache_dir=args.cache, workers=2).pixels
        train_inputs = torch.cat([train_inputs, preprocess(extra, PREPROCESSING, settings.size)])
    record(0, float("nan"), 0.0)
    with torch.inference_mode():
        centre = F.normalize(torch.from_numpy(embed_all(backbone, train_inputs)), dim=1).mean(dim=0).to(device)
    blocks = list(backbone._blocks)  # EfficientNet-Lite: 16 inverted-residual blocks
    for parameter in backbone.parameters():
        parameter.requires_grad_(True)
    for block in blocks[: settings.trainable_from]:
        for parameter in block.parameters():
            parameter.requires_grad_(False)
    trainable = [parameter for parameter in backbone.parameters() if parameter.requires_grad]
    optimiser = torch.optim.SGD(trainable, lr=settings.learning_rate, momentum=0.9, weight_decay=settings.weight_decay)
    views = pipeline_augment if settings.augment == "pipeline" else augment
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        order = torch.randperm(len(train_inputs), generator=generator)
        losses = []
        backbone.train()
        for begin in range(0, len(order) - settings.batch_size + 1, settings.batch_size):
            batch = train_inputs[order[begin : begin + settings.batch_size]].to(device)
            loss = mean_shifted_contrastive_loss(
                embed(backbone, views(batch, generator)),
                embed(backbone, views(batch, generator)),
                centre,
                settings.temperature,
            )
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            losses.append(loss.item())
        backbone.eval()
        record(epoch, float(np.mean(losses)), time.perf_counter() - started)


if __name__ == "__main__":
    main()
