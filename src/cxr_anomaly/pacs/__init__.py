"""DICOM network side of cxr-anomaly: receive films from a PACS, score them, send results back."""
