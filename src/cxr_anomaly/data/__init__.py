"""Data sources, manifests, pixel loading, caching and patient-disjoint splits.

Modules:

- :mod:`~cxr_anomaly.data.table`: the manifest table's columns and :func:`normalise_manifest`,
  which every source goes through;
- :mod:`~cxr_anomaly.data.manifest`: :func:`load_inputs` (folders, manifest CSVs, npz
  archives), with the table's names re-exported;
- one module per collection, each building a manifest: :mod:`~cxr_anomaly.data.nih`
  (:func:`build_nih_manifest`), :mod:`~cxr_anomaly.data.rsna` (:func:`build_rsna_manifest`),
  :mod:`~cxr_anomaly.data.kermany` (:func:`build_kermany_manifest`) and
  :mod:`~cxr_anomaly.data.medmnist` (:func:`build_medmnist_manifest`);
- :mod:`~cxr_anomaly.data.splits`: the paper's exact-size patient-disjoint splits
  (:func:`nih_paper_split`, :func:`rsna_paper_split`), :func:`patient_disjoint_split` and the
  file-to-file :func:`resplit_manifest`;
- :mod:`~cxr_anomaly.data.dataset`: :func:`load_images` (pixels of a manifest, bad files raised
  or skipped and reported) and :func:`to_model_tensor`;
- :mod:`~cxr_anomaly.data.cache`: decoding in threads on all cores and the persistent uint8 cache;
- :mod:`~cxr_anomaly.data.copies`: one film in two sets (the same film through two pipelines),
  found by content.

Submodules are imported on use, so that decoding workers start without torch.
"""
