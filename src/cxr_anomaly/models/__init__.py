"""Networks. Each model lives in its own folder with ``torch_model.py`` and ``loss.py``."""
