"""Export: a trained model as graphs that run without bigmodel's training code.

- ``program``: ``torch.export`` programs (``.pt2``), and :func:`capture`, the one tracing step.
- ``onnx``: ONNX files checked in ONNX Runtime against PyTorch, decoders with their KV cache as
  explicit inputs and outputs, and greedy decoding with ONNX Runtime alone.

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

__all__ = [
    "OnnxGenerator",
    "Program",
    "capture",
    "export_decoder",
    "export_onnx",
    "export_program",
    "export_task_onnx",
    "export_task_program",
    "load_program",
    "onnx_session",
    "run_onnx",
    "verify_onnx",
    "verify_program",
]
