"""Export: a trained model as graphs that run without bigmodel's training code.

- ``program``: ``torch.export`` programs (``.pt2``), and :func:`capture`, the one tracing step.
- ``onnx``: ONNX files checked in ONNX Runtime against PyTorch, decoders with their KV cache as
  explicit inputs and outputs, and greedy decoding with ONNX Runtime alone.
- ``runtime``: an export folder opened in the model's place (``open_export``: the task from task.json,
  a ``GraphModel`` whose forward is the graph); ``Predictor.from_export`` and ``bigmodel serve FOLDER``.

A task says what its graph takes with ``Task.export_signature(model, batch)``: the module, the batch's
tensors by name (as ``Task.forward`` passes them) and the axes that vary between batches.
"""

from bigmodel.export.onnx import (
    OnnxGenerator,
    export_decoder,
    export_onnx,
    export_task_onnx,
    onnx_session,
    run_onnx,
    verify_onnx,
)
from bigmodel.export.program import (
    Program,
    capture,
    export_program,
    export_task_program,
    load_program,
    verify_program,
)
from bigmodel.export.runtime import GraphModel, is_export_folder, open_export

__all__ = [
    "GraphModel",
    "OnnxGenerator",
    "Program",
    "capture",
    "export_decoder",
    "export_onnx",
    "export_program",
    "export_task_onnx",
    "export_task_program",
    "is_export_folder",
    "load_program",
    "onnx_session",
    "open_export",
    "run_onnx",
    "verify_onnx",
    "verify_program",
]
