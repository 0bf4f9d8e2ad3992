"""Evaluation as a library: held-out subsets, reconstruction and generation metrics, the causality probe's
embeddings, and strict JSON reports. `python -m spectralar.evaluate` and `python -m spectralar.experiments`
are thin command lines over these functions.

    metrics   PSNR, SSIM, classifier-feature Frechet distance, diversity, ridge R^2 (pure functions)
    measures  the measurements on models: reconstructions, samples under the classifier, the classifier itself
    probes    the causality probe's embeddings
"""

from .measures import (
    PSNR_CAP_DB,
    class_accuracy,
    classifier_metrics,
    decode_all,
    encode_all,
    load_subset,
    reconstruction_metrics,
    save_classifier,
    train_classifier,
    write_json,
)
from .probes import dct_bands, pca_project, probe_r2, raster_patches

__all__ = [
    "PSNR_CAP_DB",
    "class_accuracy",
    "classifier_metrics",
    "dct_bands",
    "decode_all",
    "encode_all",
    "load_subset",
    "pca_project",
    "probe_r2",
    "raster_patches",
    "reconstruction_metrics",
    "save_classifier",
    "train_classifier",
    "write_json",
]
