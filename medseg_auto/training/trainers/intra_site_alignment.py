"""``IntraSiteVariabilityAlignment`` (AIVA): unsupervised site adaptation with unlabelled target images.

Paper: Goodman, Kasten Serlin, Greenspan, Goldberger, DART 2022, pp. 56-65 (reading notes
``NOTES_dart2022.md`` 2.1); clustering, matching and the loss are in
:mod:`~medseg_auto.training.cluster_alignment`. Meant for fine-tuning a source model::

    medseg-auto train BreastUS 2d 0 -tr IntraSiteVariabilityAlignment --source-sites busi \\
        --target-images stu_images/ --pretrained SOURCE/fold_0/checkpoint_final.pt

What happens, and our choices where the paper is silent:

- ``--target-images DIR`` is preprocessed once like the training data (``predict``'s case
  pipeline) into ``FOLD/aiva_target_cache/`` (kept for ``--continue``).
- ``--source-sites``: only these sites' training cases form the source (both the training
  batches and the embedding); the fold's other cases (e.g. the labelled target cases of a merged
  dataset) are never trained on but still validated, which gives target Dice in the final
  validation. Without it every training case is source.
- Each epoch start (Algorithm 1): one random patch per source and per target case (the
  configuration's patch, unaugmented, network in eval mode) is embedded as the per-channel
  ``mean / std`` and ``log std`` of the bottleneck's features *before its last instance norm*,
  ``(2F,)`` (scale-free: the norm undoes any rescaling of those features, so a raw mean and std
  would let the network shrink the alignment loss for free)
  (``--aiva-source-patches N``: a random N source cases per epoch, to bound the cost on a CPU).
  Departures from the paper, which flattens whole-slice bottlenecks: our patches sit at random
  positions, where a spatial flattening would compare unrelated locations, so the embedding is
  pooled; and it is pooled before the norm because after it (the former choice, still
  ``--aiva-features gap``) every sample's channel means are nearly the same: clusters of such
  vectors carry little between-sample variability to align (issue 13; the between-sample spread
  is 3x larger before the norm, see :mod:`~medseg_auto.training.feature_statistics`).
- PCA (20 axes) then k-means per site (``--aiva-embedding tsne`` adds the paper's 2-D t-SNE),
  k = 12 capped by the case counts, Hungarian matching.
- Every step the method draws ``--aiva-target-batch`` (default: the plans' batch) of the
  epoch's *embedded* target patches (the same crops, cut again from the cache), so each has the
  cluster the epoch assigned it, as in the paper; they go through the network inside the
  trainer's autocast and in train mode (for BatchNorm networks this updates running statistics
  with target batches; the plans' instance norm has none). Cost: one more forward and backward
  of a batch per step, plus one forward per case per epoch. Measured (BreastUS cpu_coarse 2d,
  patch 128x160, batch 10, 1 thread bf16 on this project's busy 2-core CPU): embedding 624
  source + 33 target cases 55 s per epoch, the alignment step's forward + backward 1.5 s
  (a Base step: about 2.5 s). The paper reports < 2% for its version, which reuses the
  features of the slices seen in training batches; ours re-embeds fresh crops.
- lambda = 1 / mean of the raw alignment loss over the first ``--aiva-calibration-steps`` (5,
  as the authors' code) minibatches of the run; those steps add no alignment loss. lambda and
  the calibration values are kept in the checkpoint. ``--aiva-weight`` scales lambda further.
- Logged per epoch: ``aiva_alignment`` (raw), ``aiva_loss`` (weighted), ``aiva_clusters``,
  ``aiva_matching_cost``, ``aiva_embed_seconds``; the last clustering is written to
  ``FOLD/aiva_clusters.json``.
- Not tested under DDP (each rank clusters on its own; features may differ in the last bits).
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from monai.networks.nets import DynUNet
from torch import nn

from medseg_auto.errors import MedsegError
from medseg_auto.training.cluster_alignment import EMBEDDINGS, alignment_loss, cluster_and_match
from medseg_auto.training.data.case_samplers import UniformCaseSampler
from medseg_auto.training.data.image_folder_cache import cache_image_folder
from medseg_auto.training.data.patch_sampler import PatchSampler
from medseg_auto.training.feature_statistics import prenorm_recorder, scale_free_mean_std
from medseg_auto.training.hooks import DatasetInfo, DomainMethod, TrainingContext
from medseg_auto.training.registry import register_trainer
from medseg_auto.utils.atomic import write_json_atomic
from medseg_auto.utils.logging_setup import get_logger

log = get_logger("training.aiva")
TARGET_CACHE_FOLDER = "aiva_target_cache"
CLUSTERS_FILE = "aiva_clusters.json"


AIVA_FEATURES = ("prenorm", "gap")


def pooled(features: torch.Tensor) -> torch.Tensor:
    """Global average over the spatial axes: ``(B, F, *s) -> (B, F)`` float32."""
    return features.float().flatten(2).mean(dim=2)


def bottleneck_embedding(prenorm_features: torch.Tensor) -> torch.Tensor:
    """The default embedding: ``(B, F, *s)`` features before the bottleneck's last norm -> ``(B, 2F)``
    per-channel mean / std and log std (float32; unchanged by a per-channel scaling of those
    features, which the norm would undo anyway, so the alignment loss cannot be lowered by it)."""
    return scale_free_mean_std(prenorm_features)


@register_trainer("IntraSiteVariabilityAlignment")
class IntraSiteVariabilityAlignment(DomainMethod):
    """AIVA (DART 2022): align matched k-means clusters of target and source bottleneck features."""

    @classmethod
    def add_cli_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--target-images", default=None, metavar="DIR",
                            help="folder of unlabelled target-site images (CASE_0000.ext or one file per case); required")
        parser.add_argument("--source-sites", nargs="+", default=None, metavar="SITE",
                            help="train (and embed) only the training cases of these sites (default: all)")
        parser.add_argument("--aiva-clusters", type=int, default=12, metavar="K",
                            help="k-means clusters per site, capped by the number of cases (default: 12)")
        parser.add_argument("--aiva-embedding", choices=EMBEDDINGS, default="pca",
                            help="pca: cluster in the joint PCA space; tsne: PCA then 2-D t-SNE as the paper (default: pca)")
        parser.add_argument("--aiva-pca-components", type=int, default=20, metavar="N",
                            help="PCA axes (default: 20, as the authors' code)")
        parser.add_argument("--aiva-source-patches", type=int, default=None, metavar="N",
                            help="embed a random N of the source cases each epoch (default: all; the embedding "
                                 "costs one forward per case: 55 s per epoch for 657 2D 128x160 crops on one busy CPU thread)")
        parser.add_argument("--aiva-target-batch", type=int, default=None, metavar="N",
                            help="target patches per step (default: the plans' batch size)")
        parser.add_argument("--aiva-calibration-steps", type=int, default=5, metavar="N",
                            help="first steps whose mean alignment loss sets lambda = 1 / mean (default: 5)")
        parser.add_argument("--aiva-weight", type=float, default=1.0, metavar="W",
                            help="extra factor on lambda (default: 1)")
        parser.add_argument("--aiva-features", choices=AIVA_FEATURES, default="prenorm",
                            help="bottleneck embedding: per-channel mean and std before its last instance norm "
                                 "(default), or the global average after it (nearly the same for every sample)")

    def __init__(self, options: Mapping[str, Any] | None = None) -> None:
        super().__init__(options)
        self.lam: float | None = None  # set after the calibration steps (or from a checkpoint)
        self.calibration: list[float] = []
        self.epoch_logs: dict[str, float] = {}

    # ----- set-up ------------------------------------------------------------------------------
    def setup(self, context: TrainingContext) -> None:
        folder = self.options.get("target_images")
        if not folder:
            raise MedsegError("IntraSiteVariabilityAlignment needs --target-images DIR (unlabelled target-site images)")
        if not isinstance(context.network, DynUNet):
            raise MedsegError("IntraSiteVariabilityAlignment needs a DynUNet-based network (it reads the bottleneck)")
        if context.pretrained_checkpoint is None:
            log.warning("AIVA without --pretrained: the paper adapts a model already trained on the source site")
        self.network, self.device = context.network, context.device
        configuration = context.configuration
        batch_size = context.settings.batch_size or configuration.batch_size
        self.target_batch = int(self.options.get("aiva_target_batch") or batch_size)
        self.embed_batch = max(1, int(batch_size))
        if context.output_folder is None:
            raise MedsegError("IntraSiteVariabilityAlignment needs the fold's output folder (for its target-image "
                              "cache and cluster file); the training context has none")
        self.autocast = context.autocast  # the trainer's precision, with its safety checks
        self.output_folder = context.output_folder
        self.seed = int(context.seed % 2**31)  # the run's seed, also when resumed
        self.source_cases = self._source_cases(context.train_case_ids, context.sites)
        cache_root = context.output_folder / TARGET_CACHE_FOLDER
        if context.world_size > 1:
            cache_root = cache_root.with_name(f"{TARGET_CACHE_FOLDER}_rank{context.rank}")  # no write races
        target_cache = cache_image_folder(Path(folder), context.plans, configuration, cache_root)
        target_cases = target_cache.case_ids()
        patch = configuration.patch_size
        self.source_sampler = PatchSampler(context.cache, self.source_cases, patch, 1, oversample_foreground_percent=0.0)
        self.target_sampler = PatchSampler(target_cache, target_cases, patch, 1, oversample_foreground_percent=0.0)
        self.target_cases = target_cases
        log.info("AIVA: %d source cases, %d target images (%s)", len(self.source_cases), len(target_cases), folder)

    def _source_cases(self, case_ids: Sequence[str], sites: Mapping[str, str | None]) -> list[str]:
        wanted = self.options.get("source_sites")
        if not wanted:
            return list(case_ids)
        known = sorted({str(sites.get(case)) for case in case_ids})
        missing = [site for site in wanted if not any(sites.get(case) == site for case in case_ids)]
        if missing:
            raise MedsegError(f"--source-sites: no training case of this fold has site(s) {', '.join(missing)} "
                              f"(sites of the training cases: {', '.join(known)})")
        return [case for case in case_ids if sites.get(case) in wanted]

    def make_sampler(self, info: DatasetInfo) -> UniformCaseSampler | None:
        if not self.options.get("source_sites"):
            return None
        return UniformCaseSampler(self._source_cases(info.case_ids, info.sites))

    # ----- every epoch -------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int, logs: dict[str, Any]) -> None:
        started = time.perf_counter()
        rng = np.random.default_rng([self.seed, epoch])
        source_cases = self.source_cases
        cap = self.options.get("aiva_source_patches")
        if cap and int(cap) < len(source_cases):
            source_cases = [source_cases[i] for i in sorted(rng.choice(len(source_cases), int(cap), replace=False))]
        source_seeds = rng.integers(0, 2**31, size=len(source_cases))
        self.target_seeds = rng.integers(0, 2**31, size=len(self.target_cases))
        self.step_rng = np.random.default_rng([self.seed, epoch, 1])
        source = self._embed(self.source_sampler, source_cases, source_seeds)
        target = self._embed(self.target_sampler, self.target_cases, self.target_seeds)
        match = cluster_and_match(source, target, int(self.options["aiva_clusters"]),
                                  int(self.options["aiva_pca_components"]), str(self.options["aiva_embedding"]),
                                  seed=self.seed)
        partners, valid = match.partner_means()
        self.partners = torch.from_numpy(partners).to(self.device)
        self.valid = torch.from_numpy(valid).to(self.device)
        self.target_labels = match.target_labels
        seconds = time.perf_counter() - started
        self.epoch_logs = {"aiva_clusters": float(match.k), "aiva_matching_cost": match.cost, "aiva_embed_seconds": seconds}
        log.info("AIVA epoch %d: %d clusters, matching cost %.4g, embedding took %.1f s", epoch, match.k, match.cost, seconds)
        if self.output_folder is not None:
            write_json_atomic(self.output_folder / CLUSTERS_FILE, {
                "epoch": epoch, "k": match.k, "matching_cost": match.cost, "lambda": self.lam,
                "target_to_source_cluster": match.partner.tolist(),
                "source_cluster_sizes": np.bincount(match.source_labels, minlength=match.k).tolist(),
                "target_cluster_sizes": np.bincount(match.target_labels, minlength=match.k).tolist(),
                "target_case_clusters": dict(zip(self.target_cases, match.target_labels.tolist())),
            })

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        logs.update(self.epoch_logs)

    def _patches(self, sampler: PatchSampler, cases: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        """The crops ``(N, C, *patch)`` of ``cases``, each fixed by its seed (so it can be cut again)."""
        data = [sampler.sample_patch(case, False, np.random.default_rng(int(seed)))[0] for case, seed in zip(cases, seeds)]
        return torch.from_numpy(np.stack(data)).to(self.device)

    def _embed(self, sampler: PatchSampler, cases: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
        """Pooled bottleneck features ``(N, F)`` of one crop per case (eval mode, no gradients)."""
        was_training = self.network.training
        self.network.eval()
        chunks = []
        try:
            with torch.no_grad(), self.autocast(), self._recorder() as record:
                for start in range(0, len(cases), self.embed_batch):
                    stop = start + self.embed_batch
                    self.network(self._patches(sampler, cases[start:stop], seeds[start:stop]))
                    chunks.append(self._embedding(record).cpu().numpy())
                    record.clear()
        finally:
            self.network.train(was_training)
        return np.concatenate(chunks)

    def _recorder(self) -> contextlib.AbstractContextManager:
        """Records what :meth:`_embedding` reads during a forward pass (a dict, cleared by the caller)."""
        if self.options["aiva_features"] == "gap":
            return _output_recorder(self.network.bottleneck)
        return prenorm_recorder(self.network.bottleneck)

    def _embedding(self, record: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``(B, D)`` float32 embedding of the latest forward pass."""
        if self.options["aiva_features"] == "gap":
            return pooled(record["features"])
        return bottleneck_embedding(record["features"])

    # ----- every step --------------------------------------------------------------------------
    def extra_loss(self, features: Mapping[str, torch.Tensor], logits: Sequence[torch.Tensor], target: torch.Tensor,
                   batch: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 2 on a minibatch of the epoch's embedded target crops, times lambda (runs inside autocast)."""
        chosen = self.step_rng.integers(0, len(self.target_cases), size=self.target_batch)
        data = self._patches(self.target_sampler, [self.target_cases[i] for i in chosen], self.target_seeds[chosen])
        clusters = torch.from_numpy(self.target_labels[chosen]).to(self.device)
        calibrating = self.lam is None
        with torch.no_grad() if calibrating else contextlib.nullcontext(), self._recorder() as record:
            self.network(data)
            raw = alignment_loss(self._embedding(record), clusters, self.partners, self.valid)
        value = float(raw.detach())
        if calibrating:
            self.calibration.append(value)
            if len(self.calibration) >= int(self.options["aiva_calibration_steps"]):
                self._set_lambda()
            return torch.zeros((), device=self.device), {"aiva_alignment": value, "aiva_loss": 0.0}
        weighted = float(self.options["aiva_weight"]) * self.lam * raw
        return weighted, {"aiva_alignment": value, "aiva_loss": float(weighted.detach())}

    def _set_lambda(self) -> None:
        mean = float(np.mean(self.calibration))
        if not np.isfinite(mean) or mean <= 1e-12:
            log.warning("AIVA: mean initial alignment loss is %.3g; lambda set to 1", mean)
            self.lam = 1.0
        else:
            self.lam = 1.0 / mean
        log.info("AIVA: lambda = %.4g (1 / mean alignment loss of the first %d steps)", self.lam, len(self.calibration))

    # ----- checkpoints -------------------------------------------------------------------------
    def extra_checkpoint_state(self) -> dict[str, Any]:
        return {"lambda": self.lam if self.lam is not None else -1.0, "calibration": list(self.calibration)}

    def load_extra_checkpoint_state(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        lam = float(state.get("lambda", -1.0))
        self.lam = lam if lam > 0 else None
        self.calibration = [float(v) for v in state.get("calibration", [])]



@contextlib.contextmanager
def _output_recorder(block: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """``--aiva-features gap``: ``record["features"]`` is ``block``'s latest output."""
    record: dict[str, torch.Tensor] = {}
    handle = block.register_forward_hook(lambda module, inputs, output: record.__setitem__("features", output))
    try:
        yield record
    finally:
        handle.remove()
