"""Run-time switches that keep every library off the network.

Imported first by every module that loads a model, a vector store or a web UI, so that nothing
waits on (or phones) a host that an air-gapped machine cannot reach.
"""

from __future__ import annotations

import os

_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    # ONNX Runtime 1.32 sends usage telemetry (a DNS lookup of mobile.events.data.microsoft.com, then
    # HTTPS) from native code, where no Python socket guard sees it; read when onnxruntime is imported.
    "ORT_DISABLE_TELEMETRY": "1",
}


def enforce_offline() -> None:
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


enforce_offline()
